"""The worker tier's gunicorn hooks, called as gunicorn calls them, on small real objects."""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

from tests.conftest import LayoutFactory


def load_conf(layout: Path, monkeypatch: pytest.MonkeyPatch, visible: str | None) -> ModuleType:
    monkeypatch.setenv("FANOUT_LAYOUT", str(layout))
    monkeypatch.setenv("FANOUT_POOL", "gpu")
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    for name in ("CUDA_VISIBLE_DEVICES", "FANOUT_SLOT", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(name, os.environ.get(name, ""))  # restored after the test
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
    conf.post_fork(server(), SimpleNamespace(pid=1, fanout_slot=slot))
    assert os.environ["CUDA_VISIBLE_DEVICES"] == expected
    assert os.environ["FANOUT_SLOT"] == str(slot)
    assert os.environ["OMP_NUM_THREADS"] == ("2" if slot == 1 else "1")


def test_a_slot_past_the_visible_gpus_is_refused(layout: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    conf = load_conf(layout, monkeypatch, "7")
    with pytest.raises(RuntimeError, match="cuda:1 but CUDA_VISIBLE_DEVICES lists only 1"):
        conf.post_fork(server(), SimpleNamespace(pid=1, fanout_slot=0))
