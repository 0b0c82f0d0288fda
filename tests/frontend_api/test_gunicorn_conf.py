"""The front's gunicorn settings, read as gunicorn reads them."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest

from tests.conftest import LayoutFactory


def test_an_inherited_prometheus_multiproc_dir_is_cleared(
        write_layout: LayoutFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The front is one process with one registry: left set, the variable would make
    # prometheus_client (imported by the app after fork) write files there instead.
    monkeypatch.setenv("FANOUT_LAYOUT", str(write_layout()))
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setenv("prometheus_multiproc_dir", str(tmp_path))
    import frontend_api.gunicorn_conf as conf

    conf = importlib.reload(conf)  # the module runs once, at gunicorn's start

    assert conf.workers == 1 and conf.worker_class == "gthread"
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    assert "prometheus_multiproc_dir" not in os.environ
