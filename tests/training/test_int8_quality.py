"""int8 must not cost quality: each shipped model as the shipped layout serves it
(CTranslate2, int8) against itself in float32 under transformers, the reference.

Live, on a slice of the held-out evaluation text, to stay quick: every 16th of its
256-token windows (11 windows, 2,805 target tokens, spread over all six held-out
addresses), scored by both engines; and 2 seeded samples per evaluation prompt (16 of 60
tokens) through the int8 engine. The full evaluation's figures, recorded in each eval.json
by ``fanout eval models/NAME --engine both``, are held to the same bounds.

The held-out text comes from the corpus cache ``fanout eval`` uses (fetched there on
first use); without it, or without Debian's word list, the live tests skip and say why.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.conftest import SHIPPED_MODELS
from training.corpus import CorpusError
from training.evaluate import (
    CORPUS_CACHE,
    PROMPTS,
    WORD_LIST,
    engine_perplexity,
    engine_samples,
    load_ctranslate2,
    model_perplexity,
    real_word_share,
    windows,
)
from training.tokens import load_splits
from worker_api.engines.ctranslate2_engine import CTranslate2Engine

QUANTIZATION = "int8"
MAX_PERPLEXITY_CHANGE = 0.02  # int8 perplexity within 2% of float32's
MIN_WORD_SHARE = 0.95
WINDOW_STRIDE = 16  # the slice scored live: windows 0, 16, 32, ...
SAMPLES_PER_PROMPT = 2


@pytest.fixture(scope="module", params=sorted(SHIPPED_MODELS))
def shipped(request: pytest.FixtureRequest) -> Path:
    return SHIPPED_MODELS[request.param]


@pytest.fixture(scope="module")
def int8(shipped: Path) -> CTranslate2Engine:
    """Converted into this session's cache and loaded as a worker slot does: one thread, so
    the figures do not depend on the machine's core count."""
    return load_ctranslate2(shipped, QUANTIZATION, threads=1)


@pytest.fixture(scope="module")
def heldout() -> np.ndarray:
    try:
        return load_splits(CORPUS_CACHE).heldout
    except CorpusError as error:
        pytest.skip(f"no held-out text in {CORPUS_CACHE}: {error}")


@pytest.fixture(scope="module")
def word_list() -> Path:
    if not WORD_LIST.is_file():
        pytest.skip(f"{WORD_LIST} is missing: apt-get install wamerican")
    return WORD_LIST


def test_int8_perplexity_is_within_2_percent_of_float32(
        shipped: Path, int8: CTranslate2Engine, heldout: np.ndarray) -> None:
    blocks = windows(heldout, int8.window)[::WINDOW_STRIDE]
    assert blocks.shape == (11, 256)
    float32 = AutoModelForCausalLM.from_pretrained(shipped, dtype=torch.float32).eval()
    reference, served = model_perplexity(float32, blocks), engine_perplexity(int8, blocks)
    assert abs(served / reference - 1) <= MAX_PERPLEXITY_CHANGE, (
        f"{shipped.name}: int8 perplexity {served:.2f} against float32 {reference:.2f}")


def test_int8_samples_are_real_words(int8: CTranslate2Engine, word_list: Path) -> None:
    drawn = engine_samples(int8, PROMPTS, SAMPLES_PER_PROMPT, length=60, seed=0)
    share, checked = real_word_share([d["completion"] for d in drawn], word_list)
    assert checked >= 500, "enough words for the share to mean something"
    assert share >= MIN_WORD_SHARE, f"{share:.1%} of {checked} words are real words"


def test_the_recorded_full_evaluation_holds_the_same_bounds(shipped: Path) -> None:
    evaluation = json.loads((shipped / "eval.json").read_text())
    served = evaluation["ctranslate2"]
    assert served["engine"] == "ctranslate2" and served["quantization"] == QUANTIZATION
    assert served["heldout_tokens"] == evaluation["heldout_tokens"], "the same targets scored"
    change = served["heldout_perplexity"] / evaluation["heldout_perplexity"] - 1
    assert abs(change) <= MAX_PERPLEXITY_CHANGE
    assert served["real_word_share"] >= MIN_WORD_SHARE and served["words_checked"] >= 1000
    assert f"## Served {QUANTIZATION} by CTranslate2" in (shipped / "MODEL_CARD.md").read_text()
