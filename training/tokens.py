"""The corpus as GPT-2 token ids, cached as flat uint16 arrays (50,257 ids fit in 16 bits)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from fanout.tools.tokenizer import write_gpt2_tokenizer
from training.corpus import Document, documents, fetch, split

EOS_ID = 50256


@dataclass(frozen=True)
class TokenSplits:
    train: np.ndarray
    heldout: np.ndarray
    heldout_docs: tuple[str, ...]


def gpt2_tokenizer(cache: Path) -> PreTrainedTokenizerBase:

    folder = cache / "gpt2-tokenizer"
    if not (folder / "vocab.json").is_file():
        write_gpt2_tokenizer(folder)
    return AutoTokenizer.from_pretrained(folder)


def encode(docs: list[Document], tokenizer: PreTrainedTokenizerBase) -> np.ndarray:
    """Documents joined by <|endoftext|>, as GPT-2 was trained."""
    ids: list[int] = []
    for doc in docs:
        ids.extend(tokenizer(doc.text, add_special_tokens=False).input_ids)
        ids.append(EOS_ID)
    return np.asarray(ids, dtype=np.uint16)


def load_splits(cache: Path) -> TokenSplits:
    """Fetch, split and tokenize once; later calls read the cached arrays."""
    train_file, heldout_file = cache / "train.u16.npy", cache / "heldout.u16.npy"
    names_file = cache / "heldout-docs.txt"
    if not (train_file.is_file() and heldout_file.is_file() and names_file.is_file()):
        train_docs, heldout_docs = split(documents(fetch(cache)))
        tokenizer = gpt2_tokenizer(cache)
        np.save(train_file, encode(train_docs, tokenizer))
        np.save(heldout_file, encode(heldout_docs, tokenizer))
        names_file.write_text("\n".join(d.name for d in heldout_docs) + "\n")
    return TokenSplits(np.load(train_file), np.load(heldout_file),
                       tuple(names_file.read_text().split()))
