"""Measure a model folder on the held-out slice: perplexity, unigram baseline, real words.

    fanout eval models/small [--json models/small/eval.json]
    fanout eval models/small --engine ctranslate2 --quantization int8
    fanout eval models/small --engine both [--json ...]

- held-out perplexity: exp of the mean next-token loss over consecutive, non-overlapping
  windows of the held-out addresses (whole documents the model never trained on);
- unigram baseline: the perplexity, on the very same target tokens, of add-one-smoothed
  token frequencies counted on the training split;
- real-word share: of the alphabetic words in samples drawn at temperature 1, top_k 40,
  the share found in a standard English word list (Debian's ``wamerican``).

``--engine ctranslate2`` takes the same two measures as a ``ctranslate2`` pool serves the
model (converted as ``fanout convert`` does, at ``--quantization``): the perplexity from
CTranslate2's own log-probs on exactly the windows and target tokens above, the samples
through the worker's engine. ``--engine both`` prints the two side by side with their
ratio, and its ``--json`` nests the CTranslate2 figures under ``"ctranslate2"``: what the
shipped ``eval.json`` files hold, and what the model card's int8 section is rendered from.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from fanout.convert import ensure_converted
from fanout.layout import Model
from fanout.protocol import GenerationParams
from fanout.tools.tokenizer import VOCAB_SIZE
from training.tokens import EOS_ID, load_splits
from worker_api.engines.base import Engine
from worker_api.engines.ctranslate2_engine import CTranslate2Engine

REPO = Path(__file__).resolve().parent.parent
CORPUS_CACHE = REPO / ".cache" / "corpus"
WORD_LIST = Path("/usr/share/dict/american-english")
PROMPTS = ("The nation", "In the beginning", "Call me Ishmael.", "Our economy",
           "The President", "We the people", "The whale", "And the Lord said")
_WORD = re.compile(r"[A-Za-z]+")
# The sampling every evaluation uses, through either engine.
TEMPERATURE, TOP_K = 1.0, 40


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
    # The same measures through CTranslate2 (``--engine both``); None: not taken.
    ctranslate2: EngineEvaluation | None = None

    def to_json(self) -> dict[str, Any]:
        """As eval.json holds it: without a ``ctranslate2`` key when none was measured."""
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class EngineEvaluation:
    """Held-out perplexity and real-word share as a serving engine computes them."""

    engine: str
    version: str
    quantization: str
    heldout_tokens: int
    heldout_perplexity: float
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
                             temperature=TEMPERATURE, top_k=TOP_K, top_p=1.0, max_new_tokens=length,
                             num_return_sequences=per_prompt, pad_token_id=EOS_ID)
        for row in out:
            text = tokenizer.decode(row[ids.shape[1]:], skip_special_tokens=True)  # type: ignore[attr-defined]
            drawn.append({"prompt": prompt, "completion": text})
    return drawn


def engine_perplexity(engine: CTranslate2Engine, blocks: np.ndarray) -> float:
    """``model_perplexity`` with CTranslate2's log-probs: the same windows, the same targets.

    ``score_batch`` scores every token of a window after its first, given the ones before,
    as the transformers loss does; the count is checked, since a start token prepended or
    a window truncated (its ``max_input_length``, off here) would score other targets and
    the two perplexities would no longer compare.
    """
    total, count = 0.0, 0
    for start in range(0, len(blocks), 8):
        batch = [[engine.tokenizer.id_to_token(int(i)) for i in row]
                 for row in blocks[start:start + 8]]
        for tokens, scored in zip(batch, engine.generator.score_batch(batch, max_input_length=0),
                                  strict=True):
            if len(scored.log_probs) != len(tokens) - 1:
                raise RuntimeError(f"CTranslate2 scored {len(scored.log_probs)} of a "
                                   f"{len(tokens)}-token window, not {len(tokens) - 1}")
            total -= sum(scored.log_probs)
            count += len(scored.log_probs)
    return math.exp(total / count)


def engine_samples(engine: Engine, prompts: tuple[str, ...], per_prompt: int, length: int,
                   seed: int) -> list[dict[str, str]]:
    """Samples through the worker contract (``Engine.generate``), as a pool serves them.

    Sample i has seed ``seed + i``, as the front seeds the n samples of one request; each
    is replayable alone (CTranslate2 draws a seeded sample on a fresh generator).
    """
    drawn = []
    for p, prompt in enumerate(prompts):
        for i in range(per_prompt):
            # A long max_time: every sample ends by its length or end of text, never the clock.
            params = GenerationParams(context=prompt, length=length, temperature=TEMPERATURE,
                                      top_k=TOP_K, top_p=1.0, max_time=3600.0,
                                      seed=seed + p * per_prompt + i)
            drawn.append({"prompt": prompt, "completion": engine.generate(params).text})
    return drawn


def load_ctranslate2(folder: Path, quantization: str, threads: int = 1) -> CTranslate2Engine:
    """The model as a ``ctranslate2`` pool loads it: converted once into the cache."""
    model = Model(str(folder), folder)
    converted, _ = ensure_converted(model, quantization)
    return CTranslate2Engine(model, converted, "cpu", quantization, threads)


def evaluate_ctranslate2(folder: Path, cache: Path, word_list: Path, quantization: str = "int8",
                         seed: int = 0, per_prompt: int = 5, length: int = 60,
                         threads: int = 1) -> EngineEvaluation:
    engine = load_ctranslate2(folder, quantization, threads)
    blocks = windows(load_splits(cache).heldout, engine.window)
    drawn = engine_samples(engine, PROMPTS, per_prompt, length, seed)
    share, checked = real_word_share([d["completion"] for d in drawn], word_list)
    return EngineEvaluation(
        engine=engine.name, version=engine.describe()["ctranslate2"], quantization=quantization,
        heldout_tokens=int(blocks[:, 1:].size),
        heldout_perplexity=round(engine_perplexity(engine, blocks), 2),
        real_word_share=round(share, 4), words_checked=checked, samples=drawn)


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", type=Path)
    parser.add_argument("--engine", choices=("transformers", "ctranslate2", "both"),
                        default="transformers",
                        help="transformers: float32, the reference; ctranslate2: as a "
                             "ctranslate2 pool serves it; both: side by side")
    parser.add_argument("--quantization", default="int8",
                        help="CTranslate2 compute type (default: int8, as the shipped pools)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CTranslate2 threads (default: 1, as one worker slot)")
    parser.add_argument("--cache", type=Path, default=CORPUS_CACHE)
    parser.add_argument("--word-list", type=Path, default=WORD_LIST)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the figures here")


def run(args: argparse.Namespace) -> int:
    """``fanout eval FOLDER``: measure with the engines asked for; print (and --json)."""
    reference = served = None
    if args.engine != "ctranslate2":
        reference = evaluate(args.folder, args.cache, args.word_list, args.seed)
        print_evaluation(reference)
    if args.engine != "transformers":
        served = evaluate_ctranslate2(args.folder, args.cache, args.word_list,
                                      args.quantization, args.seed, threads=args.threads)
        print_engine_evaluation(served, reference)
    if args.json:
        args.json.write_text(json.dumps(figures(reference, served), indent=2) + "\n")
    return 0


def figures(reference: Evaluation | None, served: EngineEvaluation | None) -> dict[str, Any]:
    """What --json writes: the float32 figures with the served ones nested, or either alone."""
    if reference is not None:
        return replace(reference, ctranslate2=served).to_json()
    assert served is not None, "one engine at least was measured"
    return asdict(served)


def print_evaluation(result: Evaluation) -> None:
    print(f"{result.model}: {result.parameters / 1e6:.1f}M parameters")
    print(f"  held-out perplexity {result.heldout_perplexity:.1f} "
          f"(unigram baseline {result.unigram_perplexity:.1f}, "
          f"{result.heldout_tokens} tokens)")
    print(f"  real-word share {result.real_word_share:.1%} of {result.words_checked} words")
    for drawn in result.samples[::5][:4]:
        print(f"  > {drawn['prompt']}{drawn['completion']}")


def print_engine_evaluation(served: EngineEvaluation, reference: Evaluation | None) -> None:
    print(f"{served.engine} {served.version}, {served.quantization}:")
    line = f"  held-out perplexity {served.heldout_perplexity:.2f} ({served.heldout_tokens} tokens)"
    if reference is not None:
        ratio = served.heldout_perplexity / reference.heldout_perplexity
        line += f"; float32 transformers {reference.heldout_perplexity:.2f}, ratio {ratio:.4f}"
    print(line)
    print(f"  real-word share {served.real_word_share:.1%} of {served.words_checked} words")
    for drawn in served.samples[::5][:4]:
        print(f"  > {drawn['prompt']}{drawn['completion']}")

