"""Measure a model folder on the held-out slice: perplexity, unigram baseline, real words.

    .venv/bin/python scripts/eval_model.py models/small [--json models/small/eval.json]

- held-out perplexity: exp of the mean next-token loss over consecutive, non-overlapping
  windows of the held-out addresses (whole documents the model never trained on);
- unigram baseline: the perplexity, on the very same target tokens, of add-one-smoothed
  token frequencies counted on the training split;
- real-word share: of the alphabetic words in samples drawn at temperature 1, top_k 40,
  the share found in a standard English word list (Debian's ``wamerican``).
"""

from __future__ import annotations

import argparse
import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from fanout.tokenizer import VOCAB_SIZE
from training.tokens import EOS_ID, load_splits

REPO = Path(__file__).resolve().parent.parent
WORD_LIST = Path("/usr/share/dict/american-english")
PROMPTS = ("The nation", "In the beginning", "Call me Ishmael.", "Our economy",
           "The President", "We the people", "The whale", "And the Lord said")
_WORD = re.compile(r"[A-Za-z]+")


@dataclass(frozen=True)
class Evaluation:
    model: str
    parameters: int
    heldout_tokens: int
    heldout_perplexity: float
    unigram_perplexity: float
    real_word_share: float
    words_checked: int
    samples: list[dict[str, str]]


def windows(tokens: np.ndarray, length: int) -> np.ndarray:
    count = (len(tokens) - 1) // length
    return np.stack([tokens[i * length:(i + 1) * length] for i in range(count)]).astype(np.int64)


@torch.no_grad()
def model_perplexity(model: torch.nn.Module, blocks: np.ndarray) -> float:
    total, count = 0.0, 0
    for start in range(0, len(blocks), 8):
        ids = torch.from_numpy(blocks[start:start + 8])
        loss = model(input_ids=ids, labels=ids).loss  # mean over ids[:, 1:]
        targets = ids.shape[0] * (ids.shape[1] - 1)
        total += float(loss) * targets
        count += targets
    return math.exp(total / count)


def unigram_perplexity(train: np.ndarray, blocks: np.ndarray) -> float:
    """Add-one-smoothed unigram over the training split, scored on the same targets."""
    counts = np.bincount(train.astype(np.int64), minlength=VOCAB_SIZE).astype(np.float64)
    log_p = np.log((counts + 1.0) / (counts.sum() + VOCAB_SIZE))
    targets = blocks[:, 1:].reshape(-1)
    return math.exp(-float(log_p[targets].mean()))


def real_word_share(texts: list[str], word_list: Path) -> tuple[float, int]:
    if not word_list.is_file():
        raise SystemExit(f"{word_list} is missing: apt-get install wamerican")
    known = {w.strip().lower() for w in word_list.read_text(encoding="utf-8").splitlines()}
    words = [w.lower() for text in texts for w in _WORD.findall(text)]
    return sum(w in known for w in words) / max(1, len(words)), len(words)


@torch.no_grad()
def sample(model: torch.nn.Module, tokenizer: object, prompts: tuple[str, ...], per_prompt: int,
           length: int, seed: int) -> list[dict[str, str]]:
    torch.manual_seed(seed)
    drawn = []
    for prompt in prompts:
        ids = torch.tensor([tokenizer(prompt).input_ids])  # type: ignore[operator]
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True,  # type: ignore[operator]
                             temperature=1.0, top_k=40, top_p=1.0, max_new_tokens=length,
                             num_return_sequences=per_prompt, pad_token_id=EOS_ID)
        for row in out:
            text = tokenizer.decode(row[ids.shape[1]:], skip_special_tokens=True)  # type: ignore[attr-defined]
            drawn.append({"prompt": prompt, "completion": text})
    return drawn


def evaluate(folder: Path, cache: Path, word_list: Path, seed: int = 0,
             per_prompt: int = 5, length: int = 60) -> Evaluation:
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    splits = load_splits(cache)
    blocks = windows(splits.heldout, int(model.config.n_positions))
    drawn = sample(model, tokenizer, PROMPTS, per_prompt, length, seed)
    share, checked = real_word_share([d["completion"] for d in drawn], word_list)
    return Evaluation(
        model=str(folder), parameters=sum(p.numel() for p in model.parameters()),
        heldout_tokens=int(blocks[:, 1:].size),
        heldout_perplexity=round(model_perplexity(model, blocks), 2),
        unigram_perplexity=round(unigram_perplexity(splits.train, blocks), 2),
        real_word_share=round(share, 4), words_checked=checked, samples=drawn)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--cache", type=Path, default=REPO / ".cache" / "corpus")
    parser.add_argument("--word-list", type=Path, default=WORD_LIST)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    result = evaluate(args.folder, args.cache, args.word_list, args.seed)
    print(f"{result.model}: {result.parameters / 1e6:.1f}M parameters")
    print(f"  held-out perplexity {result.heldout_perplexity:.1f} "
          f"(unigram baseline {result.unigram_perplexity:.1f}, "
          f"{result.heldout_tokens} tokens)")
    print(f"  real-word share {result.real_word_share:.1%} of {result.words_checked} words")
    for drawn in result.samples[::5][:4]:
        print(f"  > {drawn['prompt']}{drawn['completion']}")
    if args.json:
        args.json.write_text(json.dumps(asdict(result), indent=2) + "\n")


if __name__ == "__main__":
    main()
