"""The capacity tool for real: tiny model, 1 and 2 workers, a few seconds each.

Also the memory-fit warning of ``fanout serve``, which needs a real start-up to show.
"""

from __future__ import annotations

import contextlib
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from fanout.tools.ports import free_port
from tests.conftest import LayoutFactory
from tests.integration.servers import still_running

pytestmark = pytest.mark.integration

CAPACITY = (sys.executable, "-m", "fanout", "capacity")


def run_watching_children(argv: list[str], log: Path,
                          timeout: float = 150) -> tuple[int, set[int]]:
    """Run ``argv``; return its status and every descendant pid seen while it ran."""
    seen: set[int] = set()
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        try:
            while process.poll() is None:
                assert time.monotonic() < deadline, log.read_text()
                with contextlib.suppress(psutil.Error):  # it may exit between the checks
                    seen.update(p.pid for p in
                                psutil.Process(process.pid).children(recursive=True))
                time.sleep(0.2)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    return process.returncode, seen


def processes_of(folder: Path) -> list[int]:
    """Live processes started with a layout under ``folder`` (orphans included)."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("FANOUT_LAYOUT", "").startswith(str(folder)):
                found.append(process.pid)
        except psutil.Error:
            continue
    return still_running(found)


def test_capacity_measures_each_worker_count_and_recommends_one(
        write_layout: LayoutFactory, tmp_path: Path) -> None:
    layout = write_layout(front={"bind": f"127.0.0.1:{free_port()}"},
                          pools={"small": {"bind": f"127.0.0.1:{free_port()}",
                                           "slots": ["cpu"]}})
    out = tmp_path / "out"
    status, seen = run_watching_children(
        [*CAPACITY, "--layout", str(layout), "--workers", "2",
         "--users", "2", "--think", "0.1", "--warmup", "1", "--duration", "3",
         "--length", "8", "--slo-p95", "30", "--out", str(out)], tmp_path / "capacity.log")
    printed = (tmp_path / "capacity.log").read_text()
    assert status == 0, printed

    report = json.loads((out / "capacity.json").read_text())
    steps = report["steps"]
    assert [s["workers"] for s in steps] == [1, 2]
    for step in steps:
        assert step["ok_requests"] > 0 and step["errors"] == 0, step
        assert step["completions"] == step["ok_requests"] * 3
        assert step["requests"] == step["ok_requests"]
        assert step["p50_s"] <= step["p95_s"] <= step["p99_s"]
        assert step["completions_per_s"] == pytest.approx(
            step["completions"] / step["duration_s"])
        assert len(step["worker_rss_bytes"]) == step["workers"]
        assert all(rss > 50 * 2**20 for rss in step["worker_rss_bytes"])  # torch is loaded
        assert 0 < step["pool_cpu_percent"] <= 100
    assert report["recommendation"]["workers"] in (1, 2)
    assert report["recommendation"]["reason"]
    assert report["memory_fit"][0]["device"] == "cpu"

    with (out / "capacity.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["workers"]) for r in rows] == [1, 2]
    assert [int(r["completions"]) for r in rows] == [s["completions"] for s in steps]
    assert (out / "capacity.png").read_bytes().startswith(b"\x89PNG")
    assert "compl/s" in printed and "recommended: " in printed

    # Both steps ran a front and a pool (masters and workers), and all of them are gone.
    assert len(seen) >= 2 * 4
    assert still_running(sorted(seen)) == []
    assert processes_of(out) == []


def test_serve_warns_when_a_layout_oversubscribes_a_device(tmp_path: Path) -> None:
    # A 1.2T-parameter config (no weights): the host cannot hold it, and the worker then
    # fails to load it, which ends the serve run quickly.
    huge = tmp_path / "huge"
    huge.mkdir()
    (huge / "config.json").write_text(json.dumps({
        "model_type": "gpt2", "n_layer": 96, "n_embd": 32_768, "n_head": 128,
        "n_positions": 2048, "vocab_size": 50257}))
    layout = tmp_path / "huge.yaml"
    layout.write_text(f"front: {{bind: '127.0.0.1:{free_port()}'}}\n"
                      f"pools:\n  big: {{model: '{huge}', bind: '127.0.0.1:{free_port()}', "
                      "slots: [cpu, cpu]}\n")
    result = subprocess.run([sys.executable, "-m", "fanout", "serve", "--layout", str(layout)],
                            capture_output=True, text=True, timeout=120)
    assert "warning: cpu is oversubscribed: its 2 workers need about" in result.stderr
    assert result.returncode == 1  # the warning does not stop it; the missing weights do
