"""The worker tier's gunicorn hooks, called as gunicorn calls them, on small real objects."""

from __future__ import annotations

import importlib
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.samples import Sample

from tests.conftest import LayoutFactory
from worker_api.gathering import GatheringWorker
from worker_api.slots import METRICS_DIR_ENV, RESTARTED_ENV, STATE_DIR_ENV


def load_conf(layout: Path, monkeypatch: pytest.MonkeyPatch, visible: str | None) -> ModuleType:
    monkeypatch.setenv("FANOUT_LAYOUT", str(layout))
    monkeypatch.setenv("FANOUT_POOL", "gpu")
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    for name in ("CUDA_VISIBLE_DEVICES", "FANOUT_SLOT", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                 RESTARTED_ENV, STATE_DIR_ENV):
        monkeypatch.setenv(name, os.environ.get(name, ""))  # restored after the test
    # Set by on_starting; unset before and after, or later child processes would inherit it.
    monkeypatch.setenv(METRICS_DIR_ENV, "")
    monkeypatch.delenv(METRICS_DIR_ENV)
    import worker_api.gunicorn_conf as conf
    return importlib.reload(conf)  # the module reads the layout once, at import


@pytest.fixture
def layout(write_layout: LayoutFactory) -> Path:
    return write_layout(pools={"gpu": {"bind": "127.0.0.1:9101", "slots": [
        {"device": "cuda:1"}, {"device": "cpu", "threads": 2}, {"device": "cuda:0"}]}})


def server(*workers: SimpleNamespace) -> SimpleNamespace:
    return SimpleNamespace(WORKERS={i: w for i, w in enumerate(workers)},
                           log=logging.getLogger("test"))


def test_settings_follow_the_pool(layout: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = load_conf(layout, monkeypatch, None)
    assert conf.workers == 3 and conf.worker_class == "sync"
    assert conf.bind == ["127.0.0.1:9101"] and conf.timeout == 60
    assert conf.preload_app is False


def test_a_ctranslate2_pool_gathers_what_queues_with_a_board_per_slot(
        write_layout: LayoutFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_layout(pools={"gpu": {"bind": "127.0.0.1:9101", "engine": "ctranslate2",
                                       "dtype": None, "batch": 3,
                                       "slots": [{"device": "cpu"}, {"device": "cpu"}]}})
    conf = load_conf(path, monkeypatch, None)
    assert issubclass(conf.worker_class, GatheringWorker) and conf.worker_class.batch == 3
    assert len(conf.worker_class.board.flags) == 2


def test_pre_fork_fills_the_lowest_free_slot(layout: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    conf = load_conf(layout, monkeypatch, None)
    first, second, third = (SimpleNamespace(pid=10 + i) for i in range(3))
    conf.pre_fork(server(), first)
    conf.pre_fork(server(first), second)
    conf.pre_fork(server(first, second), third)
    assert [w.fanout_slot for w in (first, second, third)] == [0, 1, 2]

    respawn = SimpleNamespace(pid=99)  # the worker in slot 1 died
    conf.pre_fork(server(first, third), respawn)
    assert respawn.fanout_slot == 1


@pytest.mark.parametrize(("visible", "slot", "expected"), [
    (None, 0, "1"), (None, 1, ""), (None, 2, "0"), ("4,5", 0, "5"), ("4,5", 2, "4")])
def test_post_fork_shows_a_worker_only_its_device(
        layout: Path, monkeypatch: pytest.MonkeyPatch, visible: str | None, slot: int,
        expected: str) -> None:
    conf = load_conf(layout, monkeypatch, visible)
    conf.post_fork(server(), SimpleNamespace(pid=1, fanout_slot=slot, fanout_restart=False))
    assert os.environ["CUDA_VISIBLE_DEVICES"] == expected
    assert os.environ["FANOUT_SLOT"] == str(slot)
    assert os.environ["OMP_NUM_THREADS"] == ("2" if slot == 1 else "1")


def test_a_slot_past_the_visible_gpus_is_refused(layout: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    conf = load_conf(layout, monkeypatch, "7")
    with pytest.raises(RuntimeError, match="cuda:1 but CUDA_VISIBLE_DEVICES lists only 1"):
        conf.post_fork(server(), SimpleNamespace(pid=1, fanout_slot=0, fanout_restart=False))


def test_a_worker_taking_a_slot_held_before_is_told_it_is_a_restart(
        layout: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = load_conf(layout, monkeypatch, None)
    first, second, third = (SimpleNamespace(pid=10 + i) for i in range(3))
    conf.pre_fork(server(), first)
    conf.pre_fork(server(first), second)
    conf.pre_fork(server(first, second), third)
    assert [w.fanout_restart for w in (first, second, third)] == [False] * 3
    conf.post_fork(server(), second)
    assert os.environ[RESTARTED_ENV] == "0"

    respawn = SimpleNamespace(pid=99)  # the worker in slot 1 died
    conf.pre_fork(server(first, third), respawn)
    assert respawn.fanout_slot == 1 and respawn.fanout_restart is True
    conf.post_fork(server(), respawn)
    assert os.environ[RESTARTED_ENV] == "1"


def test_the_master_never_imports_prometheus_client(layout: Path) -> None:
    # prometheus_client picks its multiprocess mode when first imported; forked workers
    # inherit the master's modules, so an import before on_starting would leave every
    # worker writing metrics no other worker can read.
    run = subprocess.run(
        [sys.executable, "-c", "import sys, worker_api.gunicorn_conf; "
                               "print(sorted(m for m in sys.modules if 'prometheus' in m))"],
        env={**os.environ, "FANOUT_LAYOUT": str(layout), "FANOUT_POOL": "gpu"},
        capture_output=True, text=True, timeout=60, check=True)
    assert run.stdout.strip() == "[]"


# A worker process of slot 0: boots, generates 7 tokens, prints its pid.
WORKER = textwrap.dedent("""
    import os
    from types import SimpleNamespace
    import falcon
    from fanout.layout import Slot
    from worker_api import metrics
    slot = Slot(0, "cpu")
    metrics.record_boot(slot, 2.5, restarted=False, memory={"rss_bytes": 1000})
    observer = metrics.WorkerObserver(falcon.routing.CompiledRouter(), slot,
                                      lambda: {"rss_bytes": 2000})
    observer.completed(SimpleNamespace(tokens=7, time=0.5, finish_reason="length", batch=1))
    print(os.getpid())
""")


def samples(directory: Path) -> dict[str, list[Sample]]:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    found: dict[str, list[Sample]] = {}
    for family in registry.collect():
        for sample in family.samples:
            found.setdefault(sample.name, []).append(sample)
    return found


def test_workers_share_a_fresh_metrics_directory_and_a_dead_ones_gauges_go(
        layout: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = load_conf(layout, monkeypatch, None)
    conf.on_starting(server())
    directory = Path(os.environ[METRICS_DIR_ENV])
    assert directory.is_dir() and not any(directory.iterdir())
    assert directory != Path(os.environ[STATE_DIR_ENV])

    # The worker inherits the directory through the environment, as a forked one does.
    pid = int(subprocess.run([sys.executable, "-c", WORKER], capture_output=True, text=True,
                             timeout=60, check=True).stdout)
    alive = samples(directory)
    assert [s.value for s in alive["fanout_worker_generated_tokens_total"]] == [7]
    assert [(s.labels["pid"], s.value) for s in alive["fanout_worker_memory_bytes"]] == [
        (str(pid), 2000)]
    assert [s.value for s in alive["fanout_worker_model_load_seconds"]] == [2.5]

    conf.child_exit(server(), SimpleNamespace(pid=pid, fanout_slot=0))
    dead = samples(directory)
    assert "fanout_worker_memory_bytes" not in dead
    assert "fanout_worker_model_load_seconds" not in dead
    assert [s.value for s in dead["fanout_worker_generated_tokens_total"]] == [7]  # kept

    conf.on_exit(server())
    assert not directory.exists() and not Path(os.environ[STATE_DIR_ENV]).exists()
