"""The evaluation's measures on inputs small enough to check by hand."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from fanout.protocol import GenerationParams
from fanout.tools.tokenizer import VOCAB_SIZE
from tests.conftest import SHIPPED_MODELS
from training.evaluate import (
    EngineEvaluation,
    Evaluation,
    engine_perplexity,
    engine_samples,
    figures,
    load_ctranslate2,
    model_perplexity,
    real_word_share,
    unigram_perplexity,
    windows,
)

# Written for this test, in the register of the corpus (not taken from it).
PROSE = ("The people of this nation have always known that our economy grows when every "
         "family can work and save. Tonight I ask the Congress to pass a budget that keeps "
         "faith with them, and to build roads, schools and ports for the next generation.")


def test_windows_are_consecutive_and_leave_one_token_to_predict() -> None:
    blocks = windows(np.arange(10, dtype=np.uint16), 3)
    assert blocks.tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert blocks.dtype == np.int64


def test_the_real_word_share_counts_alphabetic_words_case_blind(tmp_path: Path) -> None:
    word_list = tmp_path / "words"
    word_list.write_text("the\nnation\nIs\n")
    share, checked = real_word_share(["The nation is strng, 1776!", "NATION"], word_list)
    assert checked == 5 and share == pytest.approx(4 / 5)


def test_a_missing_word_list_says_how_to_install_it(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="apt-get install wamerican"):
        real_word_share(["text"], tmp_path / "absent")


def test_the_unigram_baseline_is_smoothed_and_scored_on_targets_only() -> None:
    train = np.array([5, 5, 5, 7], dtype=np.uint16)
    blocks = np.array([[9, 5, 7]])  # 9 is a context token, never a target
    total = 4 + VOCAB_SIZE
    expected = math.exp(-(math.log(4 / total) + math.log(2 / total)) / 2)
    assert unigram_perplexity(train, blocks) == pytest.approx(expected)


class Uniform(torch.nn.Module):
    """Every next token equally likely: perplexity must equal the vocabulary size."""

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor) -> object:
        logits = torch.zeros(*input_ids.shape, 50, requires_grad=False)
        shifted = logits[:, :-1].reshape(-1, 50)
        loss = torch.nn.functional.cross_entropy(shifted, labels[:, 1:].reshape(-1))
        return type("Output", (), {"loss": loss})()


def test_a_uniform_model_has_the_vocabulary_size_as_perplexity() -> None:
    blocks = np.random.default_rng(0).integers(0, 50, (11, 6))
    assert model_perplexity(Uniform(), blocks) == pytest.approx(50.0, rel=1e-5)


def test_ctranslate2_scores_the_very_targets_transformers_scores() -> None:
    """A trained model at float32 through both engines agrees to 1e-4."""
    folder = SHIPPED_MODELS["small"]
    blocks = windows(np.asarray(AutoTokenizer.from_pretrained(folder)(PROSE).input_ids), 20)
    reference = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    expected = model_perplexity(reference, blocks)
    engine = load_ctranslate2(folder, "float32")
    assert engine_perplexity(engine, blocks) == pytest.approx(expected, rel=1e-4)
    # The tolerance tells target sets apart: the same windows scored from their second
    # token on (one target fewer each) come out more than 1% off.
    assert engine_perplexity(engine, blocks[:, 1:]) != pytest.approx(expected, rel=1e-2)


def test_engine_samples_are_seeded_one_by_one_and_replay(tiny_model_dir: Path) -> None:
    engine = load_ctranslate2(tiny_model_dir, "float32")
    drawn = engine_samples(engine, ("The nation", "The whale"), 2, length=8, seed=5)
    assert [d["prompt"] for d in drawn] == ["The nation"] * 2 + ["The whale"] * 2
    assert drawn == engine_samples(engine, ("The nation", "The whale"), 2, length=8, seed=5)
    assert len({d["completion"] for d in drawn}) == 4
    # Sample i is seed + i, alone: what a request for it with that seed returns.
    alone = engine.generate(GenerationParams(context="The whale", length=8, temperature=1.0,
                                             top_k=40, top_p=1.0, max_time=60.0, seed=5 + 3))
    assert alone.text == drawn[3]["completion"]


def test_eval_json_nests_the_ctranslate2_figures_only_when_measured() -> None:
    reference = Evaluation(model="m", parameters=1, heldout_tokens=10, heldout_perplexity=9.0,
                           unigram_perplexity=99.0, real_word_share=1.0, words_checked=3,
                           samples=[])
    served = EngineEvaluation(engine="ctranslate2", version="4.8.5", quantization="int8",
                              heldout_tokens=10, heldout_perplexity=9.1, real_word_share=1.0,
                              words_checked=3, samples=[])
    assert "ctranslate2" not in figures(reference, None)
    assert figures(reference, served)["ctranslate2"]["heldout_perplexity"] == 9.1
    assert figures(None, served)["quantization"] == "int8"
