"""Train a small GPT-2 on the corpus: seeded, resumable, on a GPU when there is one.

Checkpoints (weights, optimiser, step, RNG states) are written every ``--checkpoint-every``
seconds and on Ctrl-C, so a run can be stopped and resumed across sessions; ``--export``
writes the model folder fanout serves (safetensors, config, tokenizer, generation config).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm
from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel

from fanout.tools.tokenizer import VOCAB_SIZE, write_gpt2_tokenizer
from training.tokens import EOS_ID, load_splits

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Shape:
    n_layer: int
    n_embd: int
    n_head: int
    n_positions: int = 256


@dataclass(frozen=True)
class Schedule:
    steps: int
    batch_size: int = 16
    lr: float = 1.5e-3
    warmup: int = 200
    weight_decay: float = 0.1
    clip: float = 1.0
    # Matmuls under bfloat16 autocast (weights and optimiser stay float32): ~1.7x faster
    # on CPUs with AVX512-BF16 and on recent GPUs. "float32" turns it off.
    precision: str = "bfloat16"


PRESETS: dict[str, tuple[Shape, Schedule]] = {
    # Seconds to train: for tests and smoke runs of the pipeline, not for serving.
    "tiny": (Shape(n_layer=1, n_embd=32, n_head=2, n_positions=64),
             Schedule(steps=4, batch_size=2, warmup=1)),
    # The shipped models, with the schedules they were trained on: each about one epoch
    # of the corpus, what two CPU cores train in well under an hour (see their cards).
    # ~7.3M parameters (6.4M of them GPT-2's 50,257-token embedding, tied to the output).
    "small": (Shape(n_layer=4, n_embd=128, n_head=4), Schedule(steps=1200, lr=2e-3)),
    # ~17.7M parameters; shipped as float16 (--export-dtype) to stay under 50 MB.
    "medium": (Shape(n_layer=6, n_embd=256, n_head=8), Schedule(steps=1400, lr=1.2e-3)),
}


def build_model(shape: Shape) -> GPT2LMHeadModel:
    config = GPT2Config(vocab_size=VOCAB_SIZE, n_positions=shape.n_positions,
                        n_embd=shape.n_embd, n_layer=shape.n_layer, n_head=shape.n_head,
                        bos_token_id=EOS_ID, eos_token_id=EOS_ID, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config)


def learning_rate(step: int, schedule: Schedule) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < schedule.warmup:
        return schedule.lr * (step + 1) / schedule.warmup
    progress = min(1.0, (step - schedule.warmup) / max(1, schedule.steps - schedule.warmup))
    return schedule.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def batch(tokens: np.ndarray, generator: torch.Generator, size: int, length: int) -> torch.Tensor:
    """``size`` random windows of ``length`` tokens."""
    starts = torch.randint(0, len(tokens) - length, (size,), generator=generator)
    return torch.stack([torch.from_numpy(tokens[s:s + length].astype(np.int64))
                        for s in starts.tolist()])


@torch.no_grad()
def heldout_loss(model: GPT2LMHeadModel, tokens: np.ndarray, length: int,
                 device: torch.device, max_windows: int | None = None) -> float:
    """Mean next-token loss over consecutive, non-overlapping windows of the held-out slice."""
    model.eval()
    windows = [tokens[i:i + length] for i in range(0, len(tokens) - length, length)]
    windows = windows[:max_windows] if max_windows else windows
    total, count = 0.0, 0
    for start in range(0, len(windows), 8):
        ids = torch.from_numpy(np.stack(windows[start:start + 8]).astype(np.int64)).to(device)
        loss = model(input_ids=ids, labels=ids).loss
        total += float(loss) * ids.numel()
        count += ids.numel()
    model.train()
    return total / count


class Trainer:
    def __init__(self, name: str, shape: Shape, schedule: Schedule, run_dir: Path,
                 cache: Path, seed: int, device: torch.device) -> None:
        self.name, self.shape, self.schedule = name, shape, schedule
        self.run_dir, self.device, self.seed = run_dir, device, seed
        self.splits = load_splits(cache)
        torch.manual_seed(seed)
        self.model = build_model(shape)
        self.model.to(device)  # type: ignore[arg-type]  # nn.Module.to, misread by mypy
        decay = [p for p in self.model.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.model.parameters() if p.dim() < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": schedule.weight_decay},
             {"params": no_decay, "weight_decay": 0.0}], lr=schedule.lr, betas=(0.9, 0.95))
        self.generator = torch.Generator().manual_seed(seed)
        self.step, self.seconds = 0, 0.0
        self.history: list[dict[str, float]] = []

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    def save_checkpoint(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "generator": self.generator.get_state(), "torch_rng": torch.get_rng_state(),
                 "step": self.step, "seconds": self.seconds, "history": self.history,
                 "shape": asdict(self.shape), "schedule": asdict(self.schedule),
                 "seed": self.seed}
        temporary = self.checkpoint_path.with_suffix(".tmp")
        torch.save(state, temporary)
        temporary.replace(self.checkpoint_path)  # never a half-written checkpoint

    def resume(self) -> bool:
        if not self.checkpoint_path.is_file():
            return False
        state = torch.load(self.checkpoint_path, map_location=self.device, weights_only=False)
        for part, mine in (("shape", asdict(self.shape)), ("schedule", asdict(self.schedule))):
            if state[part] != mine:
                raise SystemExit(f"{self.checkpoint_path} was trained with {part} "
                                 f"{state[part]}, not {mine}; use another --run-dir or --fresh")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.step, self.seconds = state["step"], state["seconds"]
        self.history = state["history"]
        return True

    def train(self, time_budget: float | None, checkpoint_every: float,
              eval_every: int) -> None:
        schedule, length = self.schedule, self.shape.n_positions
        stop = {"asked": False}
        signal.signal(signal.SIGTERM, lambda *_: stop.update(asked=True))
        started = last_checkpoint = time.monotonic()
        bar = tqdm(total=schedule.steps, initial=self.step, desc=self.name, unit="step",
                   dynamic_ncols=True)
        try:
            while self.step < schedule.steps and not stop["asked"]:
                tick = time.monotonic()
                for group in self.optimizer.param_groups:
                    group["lr"] = learning_rate(self.step, schedule)
                ids = batch(self.splits.train, self.generator, schedule.batch_size,
                            length).to(self.device)
                with torch.autocast(self.device.type, dtype=torch.bfloat16,
                                    enabled=schedule.precision == "bfloat16"):
                    loss = self.model(input_ids=ids, labels=ids).loss
                loss.backward()
                loss_value = loss.item()
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), schedule.clip)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                elapsed = time.monotonic() - tick
                self.seconds += elapsed
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.3f}",
                                tok_s=f"{ids.numel() / elapsed:.0f}")
                if self.step % eval_every == 0 or self.step == schedule.steps:
                    self.evaluate(loss_value, bar)
                now = time.monotonic()
                if now - last_checkpoint > checkpoint_every:
                    self.save_checkpoint()
                    last_checkpoint = now
                if time_budget is not None and now - started > time_budget:
                    bar.write(f"time budget of {time_budget:.0f}s spent at step {self.step}")
                    break
        except KeyboardInterrupt:
            bar.write("interrupted")
        finally:
            bar.close()
            self.save_checkpoint()

    def evaluate(self, train_loss: float, bar: tqdm) -> None:
        loss = heldout_loss(self.model, self.splits.heldout, self.shape.n_positions,
                            self.device, max_windows=48)
        self.history.append({"step": self.step, "train_loss": train_loss,
                             "heldout_loss": loss, "seconds": self.seconds})
        bar.write(f"step {self.step}: train loss {train_loss:.3f}, held-out loss {loss:.3f} "
                  f"(perplexity {math.exp(loss):.1f}), {self.seconds / 60:.1f} min trained")

    def export(self, folder: Path, dtype: torch.dtype) -> None:
        """The folder fanout serves: safetensors weights, config, tokenizer, generation config."""
        folder.mkdir(parents=True, exist_ok=True)
        save_weights(self.model, folder, dtype)
        write_gpt2_tokenizer(folder, model_max_length=self.shape.n_positions)
        GenerationConfig(bos_token_id=EOS_ID, eos_token_id=EOS_ID, pad_token_id=EOS_ID,
                         do_sample=True, top_k=40, top_p=0.9, temperature=1.0,
                         max_new_tokens=40).save_pretrained(folder)
        facts = {"name": self.name, "shape": asdict(self.shape),
                 "schedule": asdict(self.schedule), "seed": self.seed, "steps": self.step,
                 "train_seconds": round(self.seconds, 1),
                 "tokens_seen": self.step * self.schedule.batch_size * self.shape.n_positions,
                 "train_tokens": len(self.splits.train),
                 "heldout_docs": list(self.splits.heldout_docs),
                 "device": str(self.device), "torch": torch.__version__,
                 "history": self.history}
        (folder / "training.json").write_text(json.dumps(facts, indent=2) + "\n")


def save_weights(model: GPT2LMHeadModel, folder: Path, dtype: torch.dtype) -> None:
    """Config + safetensors in ``dtype``; a copy is cast so config.json names the stored dtype."""
    shipped = copy.deepcopy(model)
    shipped.to(device="cpu", dtype=dtype)  # type: ignore[call-arg]  # nn.Module.to, misread
    weights = {k: v.detach() for k, v in shipped.state_dict().items()
               if k != "lm_head.weight"}  # tied to the token embedding: stored once
    shipped.save_pretrained(folder, state_dict=weights, safe_serialization=True)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=sorted(PRESETS))
    parser.add_argument("--steps", type=int, help="total optimiser steps (preset default)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--precision", choices=["bfloat16", "float32"],
                        help="training matmul precision (default bfloat16 autocast)")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--cache", type=Path, default=REPO / ".cache" / "corpus")
    parser.add_argument("--run-dir", type=Path, help="checkpoints (default runs/NAME)")
    parser.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    parser.add_argument("--time-budget", type=float, help="stop after this many minutes")
    parser.add_argument("--checkpoint-every", type=float, default=10.0, help="minutes")
    parser.add_argument("--eval-every", type=int, default=250, help="steps")
    parser.add_argument("--export", type=Path, help="write the model folder here when done")
    parser.add_argument("--export-only", action="store_true",
                        help="export the checkpoint as it is, without training")
    parser.add_argument("--export-dtype", choices=["float32", "float16", "bfloat16"],
                        default="float32")


def run(args: argparse.Namespace) -> int:
    """``fanout train NAME``: train (resuming unless --fresh), then export when asked."""
    torch.set_num_threads(args.threads)
    shape, schedule = PRESETS[args.name]
    overrides: dict[str, Any] = {k: v for k, v in {"steps": args.steps, "lr": args.lr,
                                                   "batch_size": args.batch_size,
                                                   "precision": args.precision}.items()
                                 if v is not None}
    schedule = Schedule(**{**asdict(schedule), **overrides})
    trainer = Trainer(args.name, shape, schedule, args.run_dir or REPO / "runs" / args.name,
                      args.cache, args.seed, pick_device(args.device))
    if not args.fresh and trainer.resume():
        print(f"resumed {trainer.checkpoint_path} at step {trainer.step}")
    if not args.export_only:
        trainer.train(None if args.time_budget is None else args.time_budget * 60,
                      args.checkpoint_every * 60, args.eval_every)
    if args.export:
        trainer.export(args.export, getattr(torch, args.export_dtype))
        print(f"exported {args.export}")
    return 0

