"""The trainer on a made-up corpus: seeded, resumable, and its export serves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fanout.layout import Model
from fanout.protocol import GenerationParams
from training.train import PRESETS, Trainer, learning_rate
from worker_api.engines.transformers_engine import TransformersEngine


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    """What training.tokens caches after fetching: token arrays and held-out names."""
    rng = np.random.default_rng(0)
    np.save(tmp_path / "train.u16.npy", rng.integers(0, 50257, 5000, dtype=np.uint16))
    np.save(tmp_path / "heldout.u16.npy", rng.integers(0, 50257, 600, dtype=np.uint16))
    (tmp_path / "heldout-docs.txt").write_text("2021_made_up\n")
    return tmp_path


def trainer(cache: Path, run_dir: Path, seed: int = 7) -> Trainer:
    shape, schedule = PRESETS["tiny"]
    return Trainer("tiny", shape, schedule, run_dir, cache, seed, torch.device("cpu"))


def weights(t: Trainer) -> torch.Tensor:
    """Every parameter, flattened into one tensor to compare runs."""
    return torch.cat([p.detach().flatten() for p in t.model.parameters()])


def test_the_same_seed_trains_the_same_weights(cache: Path, tmp_path: Path) -> None:
    first, second = trainer(cache, tmp_path / "a"), trainer(cache, tmp_path / "b")
    for t in (first, second):
        t.train(time_budget=None, checkpoint_every=1e9, eval_every=2)
    assert first.step == second.step == 4
    assert torch.equal(weights(first), weights(second))
    assert [h["step"] for h in first.history] == [2, 4]


def test_a_stopped_run_resumes_where_it_left_off(cache: Path, tmp_path: Path) -> None:
    straight = trainer(cache, tmp_path / "straight")
    straight.train(time_budget=None, checkpoint_every=1e9, eval_every=100)

    interrupted = trainer(cache, tmp_path / "resumed")
    interrupted.train(time_budget=0.0, checkpoint_every=1e9, eval_every=100)  # one step
    assert interrupted.step == 1 and interrupted.checkpoint_path.is_file()
    resumed = trainer(cache, tmp_path / "resumed")
    assert resumed.resume() and resumed.step == 1
    resumed.train(time_budget=None, checkpoint_every=1e9, eval_every=100)

    assert resumed.step == 4
    assert torch.allclose(weights(resumed), weights(straight))


def test_the_export_is_a_folder_fanout_serves(cache: Path, tmp_path: Path) -> None:
    run = trainer(cache, tmp_path / "run")
    run.train(time_budget=None, checkpoint_every=1e9, eval_every=100)
    folder = tmp_path / "model"
    run.export(folder, torch.float16)

    facts = json.loads((folder / "training.json").read_text())
    assert facts["steps"] == 4 and facts["heldout_docs"] == ["2021_made_up"]
    # The card reads the stored dtype from config.json; the trainer's copy stays float32.
    assert json.loads((folder / "config.json").read_text())["dtype"] == "float16"
    assert next(run.model.parameters()).dtype == torch.float32
    model = TransformersEngine(Model("tiny", folder), "cpu", "float32")
    done = model.generate(GenerationParams(context="The nation", length=5, temperature=1.0,
                                           top_k=40, top_p=1.0, max_time=10, seed=1))
    assert done.tokens == 5 and model.window == 64


def test_the_learning_rate_warms_up_then_decays() -> None:
    _, schedule = PRESETS["small"]
    rates = [learning_rate(step, schedule) for step in range(schedule.steps)]
    assert rates[0] < rates[schedule.warmup - 1] == pytest.approx(schedule.lr)
    assert rates[-1] == pytest.approx(schedule.lr * 0.1, rel=1e-3)
    assert all(a >= b for a, b in zip(rates[schedule.warmup:], rates[schedule.warmup + 1:],
                                      strict=False))
