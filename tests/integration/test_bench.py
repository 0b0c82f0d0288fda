"""scripts/bench.py for real, in miniature: every strategy runs and the report adds up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

BENCH = Path(__file__).resolve().parents[2] / "scripts" / "bench.py"
STRATEGIES = ["floor", "fan-out", "naive", "multi-worker naive", "batched"]


def test_a_short_bench_reports_every_strategy_consistently(tiny_model_dir: Path,
                                                           tmp_path: Path) -> None:
    n, length, requests = 2, 6, 2
    report = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, str(BENCH), "--model", str(tiny_model_dir), "--n", str(n),
         "--length", str(length), "--requests", str(requests), "--warmup", "1",
         "--overhead-requests", "20", "--json", str(report)],
        capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]

    figures = json.loads(report.read_text())
    rows = {row["strategy"]: row for row in figures["results"]}
    assert list(rows) == STRATEGIES
    for strategy, row in rows.items():
        assert strategy in run.stdout
        assert row["requests"] == requests and row["memory_mib"] > 0
        assert 0 < row["median_s"] <= row["p95_s"]
        assert row["x_floor"] == pytest.approx(row["median_s"] / rows["floor"]["median_s"],
                                               rel=0.01)  # both rounded in the report
    # Same seeds, same model: every unbatched strategy generates exactly the same tokens.
    unbatched = {rows[s]["tokens"] for s in STRATEGIES if s != "batched"}
    assert unbatched == {requests * n * length}
    assert rows["batched"]["tokens"] <= requests * n * length
    assert (rows["fan-out"]["processes"], rows["naive"]["processes"]) == (n, 1)
    overhead = figures["front_overhead"]
    assert overhead["requests"] == 20
    assert 0 < overhead["one_worker_hop_p50_ms"] < overhead["front_p50_ms"]
    assert 0 < overhead["front_inside_p50_ms"] < overhead["front_p50_ms"]
    assert "front overhead" in run.stdout
