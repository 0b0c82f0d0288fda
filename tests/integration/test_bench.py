"""``fanout bench`` for real, in miniature: every strategy runs on both engines and the
report adds up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

BENCH = (sys.executable, "-m", "fanout", "bench")
STRATEGIES = ["floor", "fan-out", "naive", "multi-worker naive", "batched"]
ENGINES = {"transformers": STRATEGIES, "ctranslate2": STRATEGIES[:-1]}  # batched: torch's


def test_a_short_bench_reports_every_strategy_consistently(tiny_model_dir: Path,
                                                           tmp_path: Path) -> None:
    n, length, requests = 2, 6, 2
    report = tmp_path / "bench.json"
    run = subprocess.run(
        [*BENCH, "--model", str(tiny_model_dir), "--n", str(n),
         "--length", str(length), "--requests", str(requests), "--warmup", "1",
         "--engines", ",".join(ENGINES), "--overhead-requests", "20", "--json", str(report)],
        capture_output=True, text=True, timeout=420)
    assert run.returncode == 0, run.stderr[-3000:]

    figures = json.loads(report.read_text())
    for engine, strategies in ENGINES.items():
        rows = {r["strategy"]: r for r in figures["results"] if r["engine"] == engine}
        assert list(rows) == strategies
        for strategy, row in rows.items():
            assert strategy in run.stdout
            assert row["requests"] == requests and 0 < row["worker_rss_mib"] <= row["memory_mib"]
            assert 0 < row["median_s"] <= row["p95_s"]
            # The report rounds medians to 0.1 ms and the ratio to 0.001: on a fast machine
            # a tiny model's medians are a few ms, so the slack follows from the rounding.
            median, floor = row["median_s"], rows["floor"]["median_s"]
            ratio = median / floor
            slack = 0.0005 + ratio * (0.00005 / median + 0.00005 / floor)
            assert abs(row["x_floor"] - ratio) <= slack * 1.001
            # min_tokens = length: seeded or not, every sample does the same work.
            assert row["tokens"] == requests * n * length
        assert (rows["fan-out"]["processes"], rows["naive"]["processes"]) == (n, 1)
    [compared] = figures["comparisons"]
    assert compared["speedup_vs_transformers_floor"] > 0 < compared["x_ctranslate2_floor"]
    assert set(compared["worker_rss_mib"]) == set(ENGINES)
    assert "transformers floor" in run.stdout
    overhead = figures["front_overhead"]
    assert overhead["requests"] == 20
    assert 0 < overhead["one_worker_hop_p50_ms"] < overhead["front_p50_ms"]
    assert 0 < overhead["front_inside_p50_ms"] < overhead["front_p50_ms"]
    assert "front overhead" in run.stdout
