"""``scripts/serve``: starts every tier, reports ready, and leaves nothing behind on stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests

from fanout.tools.ports import free_port
from tests.conftest import LayoutFactory
from tests.integration.servers import READY_SECONDS, ready_slots, still_running

pytestmark = pytest.mark.integration

SERVE = Path(__file__).resolve().parents[2] / "scripts" / "serve"


def start_serve(layout: Path, log: Path, *options: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([str(SERVE), "--layout", str(layout), *options], stdout=out,
                                stderr=subprocess.STDOUT)


def wait_for_line(process: subprocess.Popen[bytes], log: Path, needle: str) -> None:
    deadline = time.monotonic() + READY_SECONDS
    while needle not in log.read_text():
        assert process.poll() is None, f"serve exited {process.returncode}:\n{log.read_text()}"
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.3)


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_serve_starts_all_tiers_and_stops_them_all(
        write_layout: LayoutFactory, tmp_path: Path, stop_signal: signal.Signals) -> None:
    front, pool = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    layout = write_layout(front={"bind": front},
                          pools={"small": {"bind": pool, "slots": ["cpu", "cpu"]}})
    log = tmp_path / "serve.log"
    process = start_serve(layout, log)
    try:
        wait_for_line(process, log, "fanout is ready")
        assert f"http://{front}/" in log.read_text()
        tree = [p.pid for p in psutil.Process(process.pid).children(recursive=True)]
        # front master+worker, its edge (nginx master+worker), pool master+2 workers
        assert len(tree) >= 2 + 2 + 1 + 2
        response = requests.post(f"http://{front}/autocomplete", timeout=30,
                                 json={"context": "Hello", "n_samples": 2})
        assert response.status_code == 200
        ready = set(ready_slots(f"http://{pool}").values())
        assert {s["worker"]["pid"] for s in response.json()["sentences"]} <= ready

        os.kill(process.pid, stop_signal)
        assert process.wait(timeout=60) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
    assert "stopped" in log.read_text()
    assert still_running(tree) == []


def test_serve_only_starts_the_tiers_it_is_told(write_layout: LayoutFactory,
                                                 tmp_path: Path) -> None:
    # A machine that runs pool small for a front elsewhere (pools.small.hosts there).
    pool, front = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    layout = write_layout(front={"bind": front},
                          pools={"small": {"bind": pool, "slots": ["cpu"]}})
    log = tmp_path / "serve.log"
    process = start_serve(layout, log, "--only", "pool-small")
    try:
        wait_for_line(process, log, "ready: pool-small")
        assert requests.get(f"http://{pool}/health", timeout=5).status_code == 200
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://{front}/health", timeout=5)
        os.kill(process.pid, signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
    result = subprocess.run([str(SERVE), "--layout", str(layout), "--only", "pool-big"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "--only pool-big: not a tier of" in result.stderr and "pool-small" in result.stderr


def test_serve_refuses_a_bad_layout_naming_the_key(tmp_path: Path) -> None:
    layout = tmp_path / "bad.yaml"
    layout.write_text("pools:\n  small:\n    model: ./nowhere\n    bind: 127.0.0.1:1\n"
                      "    slots: [cpu]\n")
    result = subprocess.run([str(SERVE), "--layout", str(layout)], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2
    assert f"{layout}: pools.small.model: model folder" in result.stderr


def test_serve_stops_everything_when_a_tier_dies(write_layout: LayoutFactory,
                                                 tmp_path: Path) -> None:
    front = f"127.0.0.1:{free_port()}"
    layout = write_layout(front={"bind": front},
                          pools={"small": {"bind": f"127.0.0.1:{free_port()}", "slots": ["cpu"]}})
    log = tmp_path / "serve.log"
    process = start_serve(layout, log)
    try:
        wait_for_line(process, log, "fanout is ready")
        tree = [p.pid for p in psutil.Process(process.pid).children(recursive=True)]
        pool_master = next(p for p in psutil.Process(process.pid).children()
                           if "worker_api" in " ".join(p.cmdline()))
        pool_master.kill()
        assert process.wait(timeout=60) == 1
    finally:
        if process.poll() is None:
            process.kill()
    assert "pool-small exited" in log.read_text()
    assert still_running(tree) == []


def test_a_model_missing_from_the_hub_cache_stops_start_up_with_its_name(
        tmp_path: Path) -> None:
    layout = tmp_path / "hub.yaml"
    layout.write_text(f"front: {{bind: '127.0.0.1:{free_port()}'}}\n"
                      f"pools:\n  small: {{model: nobody/missing-model, "
                      f"bind: '127.0.0.1:{free_port()}', slots: [cpu]}}\n")
    result = subprocess.run([sys.executable, "-m", "fanout", "serve", "--layout", str(layout)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "hub model 'nobody/missing-model' is not in the local cache" in result.stderr
    assert "pool-small exited with status 3" in result.stderr
