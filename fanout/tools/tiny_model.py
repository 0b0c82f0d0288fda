"""Make a small, randomly initialised GPT-2 with the real tokenizer.

It writes gibberish, but it has GPT-2's architecture, tokenizer and file layout, so it
exercises every part of both tiers in tests in seconds, and a GPT-2-sized one (12 layers,
width 768) is a fair stand-in for timing. Same seed, same weights.

    fanout tiny-model models/tiny-random-gpt2 --layers 2 --width 64
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fanout.tools.tokenizer import EOS, VOCAB_SIZE, write_gpt2_tokenizer


def make_tiny_model(folder: Path, layers: int = 2, width: int = 64, heads: int = 2,
                    window: int = 256, seed: int = 0) -> Path:
    """Save a random ``GPT2LMHeadModel`` (safetensors) and GPT-2's tokenizer to ``folder``."""
    import torch  # a tool, not a tier: torch is only needed when a model is made
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    eos_id = VOCAB_SIZE - 1
    config = GPT2Config(vocab_size=VOCAB_SIZE, n_positions=window, n_embd=width,
                        n_layer=layers, n_head=heads, bos_token_id=eos_id,
                        eos_token_id=eos_id)
    model = GPT2LMHeadModel(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    write_gpt2_tokenizer(folder, model_max_length=window)
    (folder / "README.md").write_text(
        f"Randomly initialised GPT-2 ({layers} layers, width {width}, window {window}, "
        f"seed {seed}) with GPT-2's tokenizer ({EOS} = {eos_id}). Writes gibberish; made "
        "by `fanout tiny-model` for tests and timing.\n")
    return folder


def ensure_tiny_model(folder: Path, **shape: int) -> Path:
    """Make the model unless ``folder`` already holds one; safe to call on every start."""
    if (folder / "model.safetensors").is_file() and (folder / "vocab.json").is_file():
        return folder
    return make_tiny_model(folder, **shape)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", type=Path)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="overwrite an existing model")


def run(args: argparse.Namespace) -> int:
    """``fanout tiny-model FOLDER``: make it (unless there, without --force); print where."""
    shape = {"layers": args.layers, "width": args.width, "heads": args.heads,
             "window": args.window, "seed": args.seed}
    make = make_tiny_model if args.force else ensure_tiny_model
    print(make(args.folder, **shape))
    return 0

