"""The evaluation's measures on inputs small enough to check by hand."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fanout.tokenizer import VOCAB_SIZE
from training.evaluate import model_perplexity, real_word_share, unigram_perplexity, windows


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
