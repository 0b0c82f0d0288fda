"""The soak tool for real, briefly: tiny model, more clients than the front admits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fanout.tools.load import NO_ANSWER, LoadResult, Record
from fanout.tools.soak import growth, verdict
from tests.conftest import LayoutFactory
from tests.integration.test_capacity import processes_of

pytestmark = pytest.mark.integration

SOAK = (sys.executable, "-m", "fanout", "soak")


def test_a_short_soak_balances_its_books(write_layout: LayoutFactory, tmp_path: Path) -> None:
    layout = write_layout(
        pools={"small": {"bind": "127.0.0.1:18101", "slots": ["cpu", "cpu"]}},
        front={"threads": 3, "max_inflight": 2, "max_queued_samples": 0})
    report_path = tmp_path / "soak.json"
    done = subprocess.run(
        [*SOAK, "--layout", str(layout), "--clients", "6",
         "--duration", "4", "--warmup", "1", "--n-samples", "2", "--length", "5",
         "--ceiling", "1",
         "--json", str(report_path), "--log", str(tmp_path / "tiers.log")],
        capture_output=True, text=True, timeout=180)

    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(report_path.read_text())
    statuses = report["by_status"]
    assert sum(statuses.values()) == report["load"]["requests"] > 0
    assert set(statuses) == {"200", "503"}  # six clients, room for two: the rest refused
    assert statuses["503"] == report["rejected_by_front"]
    assert report["load"]["completions"] == 2 * statuses["200"]
    names = set(report["memory"]["start_bytes"])
    assert {"front master", "pool-small master"} <= names
    assert sum(name.startswith("pool-small worker") for name in names) == 2
    assert "PASSED" in done.stdout and "by status: 200:" in done.stdout
    # The engine alone first: one in-process model per slot, each given a few samples.
    ceiling = report["engine_ceiling"]
    assert ceiling["processes"] == 2 and ceiling["completions"] >= 2 * 5
    # Both figures are rounded (seconds to 1 ms, the rate to 0.01/s): bounds from that.
    slowest = ceiling["completions"] / (ceiling["seconds"] + 0.0005)
    fastest = ceiling["completions"] / (ceiling["seconds"] - 0.0005)
    assert slowest - 0.005 <= ceiling["completions_per_s"] <= fastest + 0.005
    assert "the engine alone (2 in-process models, no HTTP" in done.stdout
    assert report["engine_ceiling_batched"] is None  # a transformers pool takes no batch
    assert processes_of(tmp_path) == []


def test_a_batching_pools_ceiling_is_measured_in_whole_batches_too(
        write_layout: LayoutFactory, tmp_path: Path) -> None:
    layout = write_layout(
        pools={"small": {"bind": "127.0.0.1:18101", "engine": "ctranslate2", "dtype": None,
                         "batch": 3, "slots": ["cpu", "cpu"]}},
        front={"threads": 3, "max_inflight": 2, "max_queued_samples": 4})
    report_path = tmp_path / "soak.json"
    done = subprocess.run(
        [*SOAK, "--layout", str(layout), "--clients", "3", "--duration", "2", "--warmup",
         "1", "--n-samples", "3", "--length", "5", "--ceiling", "1", "--contexts", "own",
         "--json", str(report_path), "--log", str(tmp_path / "tiers.log")],
        capture_output=True, text=True, timeout=180)

    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(report_path.read_text())
    one, batched = report["engine_ceiling"], report["engine_ceiling_batched"]
    assert (one["rows"], batched["rows"], batched["processes"]) == (1, 3, 2)
    # Whole batches of three, at least the calibration's five per process.
    assert batched["completions"] % 3 == 0 and batched["completions"] >= 2 * 5 * 3
    assert "in batches of 3 samples:" in done.stdout
    assert report["settings"]["contexts"] == "own" and "one context each" in done.stdout
    assert processes_of(tmp_path) == []


def record(status: int, error: str = "") -> Record:
    return Record(user=0, started=0.0, latency=0.1, status=status, sentences=3, error=error)


def test_the_verdict_names_every_way_a_soak_fails() -> None:
    result = LoadResult(users=1, think=0, duration=1, records=(
        record(200), record(503), record(500), record(NO_ANSWER, "ReadTimeout")))
    memory = growth({"front master": 100, "pool worker 7": 100},
                    {"front master": 110, "pool worker 8": 100})
    problems = verdict(result, memory, rejected_by_front=2, max_growth=5.0)

    assert problems == [
        "1 requests got no answer", "unexpected 5xx answers: {500: 1}",
        "the front counted 2 503s, the clients 1", "memory grew 10.0% (limit 5%)",
        "processes died during the soak: pool worker 7"]
    clean = LoadResult(users=1, think=0, duration=1, records=(record(200), record(503)))
    assert verdict(clean, growth({"a": 100}, {"a": 104}), 1, 5.0) == []
