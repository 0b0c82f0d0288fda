"""The model card states what the model is and carries the measured figures."""

from __future__ import annotations

from typing import Any

from training.model_card import render

CONFIG = {"vocab_size": 50257, "dtype": "float32"}
EVALUATION = {"parameters": 7_259_008, "heldout_perplexity": 123.45,
              "unigram_perplexity": 1853.3, "real_word_share": 0.9321, "words_checked": 1600,
              "samples": [{"prompt": "The nation", "completion": " is strong |\n and free."}]}


def training(steps: int) -> dict[str, Any]:
    return {"name": "small", "steps": steps, "seed": 1234, "train_seconds": 5400.0,
            "tokens_seen": steps * 4096, "train_tokens": 4_356_208, "device": "cpu",
            "torch": "2.13.0+cpu", "heldout_docs": ["2021_joseph_r_biden_d"],
            "shape": {"n_layer": 4, "n_embd": 128, "n_head": 4, "n_positions": 256},
            "schedule": {"steps": 3000, "batch_size": 16, "lr": 0.002, "warmup": 200,
                         "weight_decay": 0.1}}


def test_the_card_carries_the_measured_figures() -> None:
    card = render(CONFIG, training(3000), EVALUATION)
    assert "**This is not OpenAI's GPT-2.**" in card
    assert "| held-out perplexity | **123.5** |" in card
    assert "| 1853.3 |" in card and "**93.2%** of 1,600 words" in card
    assert "- **The nation** is strong / and free." in card
    assert "2021_joseph_r_biden_d" in card and "7,259,008" in card
    assert "in progress" not in card and "\n\n\n" not in card


def test_an_unfinished_run_says_so() -> None:
    card = render(CONFIG, training(1800), EVALUATION)
    assert "**Training in progress:** this is step 1800 of a 3000-step schedule" in card
