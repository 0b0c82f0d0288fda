"""The models under models/: complete folders, honest cards, and real English models."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from fanout.layout import Model
from fanout.tools.tokenizer import VOCAB_SIZE
from tests.conftest import SHIPPED_MODELS
from training.model_card import render
from worker_api.engines.transformers_engine import TransformersEngine

MAX_WEIGHTS_BYTES = 50 * 2**20
# A sentence of the kind the corpus holds, but written for this test (not in the corpus).
ENGLISH = ("The people of this country have always believed that the government should "
           "serve the nation, and that every family deserves a fair chance to work, to "
           "save, and to build a better life for their children.")


def read_json(folder: Path, name: str) -> dict:
    return json.loads((folder / name).read_text())


@pytest.fixture(scope="module", params=sorted(SHIPPED_MODELS))
def shipped(request: pytest.FixtureRequest) -> Path:
    return SHIPPED_MODELS[request.param]


@pytest.fixture(scope="module")
def loaded(shipped: Path) -> TransformersEngine:
    """Loaded exactly as a worker loads it."""
    return TransformersEngine(Model(f"./{shipped.name}", shipped), "cpu", "float32")


def test_the_folder_holds_everything_a_worker_and_a_reader_need(shipped: Path) -> None:
    names = {p.name for p in shipped.iterdir()}
    assert {"config.json", "model.safetensors", "vocab.json", "merges.txt",
            "tokenizer_config.json", "generation_config.json", "training.json", "eval.json",
            "MODEL_CARD.md"} <= names
    assert not list(shipped.glob("*.bin")), "pickle weights are never shipped"
    assert (shipped / "model.safetensors").stat().st_size <= MAX_WEIGHTS_BYTES
    config = read_json(shipped, "config.json")
    assert config["model_type"] == "gpt2" and config["architectures"] == ["GPT2LMHeadModel"]
    assert config["n_positions"] >= 256 and config["vocab_size"] == VOCAB_SIZE


def test_the_card_is_rendered_from_the_measured_figures(shipped: Path) -> None:
    expected = render(read_json(shipped, "config.json"), read_json(shipped, "training.json"),
                      read_json(shipped, "eval.json"))
    assert (shipped / "MODEL_CARD.md").read_text() == expected
    assert "**This is not OpenAI's GPT-2.**" in expected


def test_the_measured_quality_meets_the_targets(shipped: Path) -> None:
    training, evaluation = read_json(shipped, "training.json"), read_json(shipped, "eval.json")
    assert training["steps"] == training["schedule"]["steps"], "a finished schedule ships"
    assert evaluation["heldout_perplexity"] < evaluation["unigram_perplexity"] / 4
    assert evaluation["real_word_share"] >= 0.90 and evaluation["words_checked"] >= 1000


def test_the_tokenizer_is_gpt2s(loaded: TransformersEngine) -> None:
    assert loaded.tokenizer("Hello world").input_ids == [15496, 995]
    assert len(loaded.tokenizer) == VOCAB_SIZE


@torch.no_grad()
def test_it_prefers_english_to_the_same_words_shuffled(loaded: TransformersEngine) -> None:
    ids = loaded.tokenizer(ENGLISH).input_ids
    shuffled = ids[:]
    random.Random(0).shuffle(shuffled)

    def loss(tokens: list[int]) -> float:
        batch = torch.tensor([tokens])
        return float(loaded.model(input_ids=batch, labels=batch).loss)

    # An untrained GPT-2 scores both alike (about ln 50257 = 10.8 nats per token).
    assert loss(ids) < 5.5
    assert loss(ids) < loss(shuffled) - 2.0


def test_medium_is_the_larger_model() -> None:
    sizes = {name: read_json(folder, "eval.json")["parameters"]
             for name, folder in SHIPPED_MODELS.items()}
    assert sizes["medium"] > 2 * sizes["small"]
