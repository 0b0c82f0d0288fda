"""The capacity tool's choices and reports, from steps built by hand (no processes)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from fanout.launch.memory_fit import fit_report
from fanout.layout import load_layout
from fanout.tools.capacity import (
    BUSY,
    MAX_DEFAULT_WORKERS,
    Settings,
    Step,
    Usage,
    bottleneck,
    cores,
    default_max_workers,
    recommend,
    step_layout,
    table,
    write_reports,
)
from fanout.tools.load import LoadResult, Record
from tests.conftest import LayoutFactory

SETTINGS = Settings(users=4, think=0.5, duration=10.0, warmup=1.0, slo_p95=1.0, length=20,
                    n_samples=3, start_timeout=60.0)


def step(workers: int, requests: int, latency: float, errors: int = 0,
         pool_cpu: float = 30.0) -> Step:
    """``requests`` answers of 3 sentences in 10 s, all taking ``latency``; then errors."""
    records = [Record(0, i * 0.1, latency, 200, 3) for i in range(requests)]
    records += [Record(1, 0.0, 0.01, 0, 0, "ConnectionError") for _ in range(errors)]
    usage = Usage(worker_rss_bytes=(400 * 2**20,) * workers, worker_gpu_bytes=(None,) * workers,
                  pool_cpu_percent=pool_cpu, front_cpu_percent=5.0, host_cpu_percent=40.0,
                  host_memory_percent=20.0, gpu_memory_percent=None)
    return Step(workers, ("cpu",) * workers,
                LoadResult(users=4, think=0.5, duration=10.0, records=tuple(records)), usage, 3)


def test_the_highest_throughput_within_the_slo_is_recommended() -> None:
    steps = [step(1, 20, 0.4), step(2, 38, 0.5), step(3, 45, 0.9, pool_cpu=95.0),
             step(4, 50, 1.6, pool_cpu=99.0)]
    choice = recommend(steps, SETTINGS)
    assert choice.workers == 3
    assert "4 workers broke the SLO (p95 1.60 s)" in choice.reason
    assert f"CPU-bound at 4 workers: the pool used 99% of {cores()} cores" in choice.reason


def test_errors_disqualify_and_flat_throughput_reads_as_saturation() -> None:
    steps = [step(1, 20, 0.3), step(2, 31, 0.6), step(3, 40, 0.5, errors=1)]
    choice = recommend(steps, SETTINGS)
    assert choice.workers == 2
    assert choice.reason.startswith("2 workers: 9.30 completions/s with p95 0.60 s")
    assert "3 workers had 1 errors" in choice.reason
    flat = recommend([step(1, 30, 0.3), step(2, 30, 0.7)], SETTINGS)
    assert flat.workers == 1  # a tie goes to fewer workers
    assert "Workers saturated: 2 workers changed throughput by +0% while p95 went from " \
           "0.30 s to 0.70 s" in flat.reason


def test_throughput_within_noise_of_the_best_goes_to_fewer_workers() -> None:
    choice = recommend([step(1, 20, 0.4), step(2, 38, 0.5), step(3, 39, 0.6)], SETTINGS)
    assert choice.workers == 2
    assert "3 workers reached 11.70/s, within 5%: no gain worth the memory" in choice.reason
    assert "3 workers changed throughput by +3%" in choice.reason


def test_no_recommendation_when_nothing_meets_the_slo() -> None:
    choice = recommend([step(1, 10, 3.0), step(2, 12, 2.0)], SETTINGS)
    assert choice.workers is None
    assert "the lowest p95 was 2.00 s at 2 workers" in choice.reason


def test_the_largest_count_tried_says_so_and_flags_a_light_load() -> None:
    light = Settings(**{**SETTINGS.__dict__, "users": 1, "n_samples": 2})
    choice = recommend([step(1, 10, 0.3), step(2, 19, 0.3)], light)
    assert choice.workers == 2
    assert "largest count tried (2)" in choice.reason
    assert "Load-bound: 1 users x 2 samples keep at most 2 workers busy" in choice.reason


def test_bottleneck_names_the_saturated_resource() -> None:
    assert bottleneck(step(1, 10, 0.1)) == ""
    assert bottleneck(step(1, 10, 0.1, pool_cpu=BUSY)) == "cpu"


def test_a_step_layout_holds_only_the_pool_with_its_slots_repeated(
        write_layout: LayoutFactory, tmp_path: Path, tiny_model_dir: Path) -> None:
    layout = load_layout(write_layout(pools={
        "small": {"bind": "127.0.0.1:9101", "worker_timeout": 30,
                  "slots": ["cpu", {"device": "cpu", "threads": 2}]},
        "other": {"bind": "127.0.0.1:9102", "slots": ["cpu"]}}))
    derived = step_layout(layout, layout.pools["small"], 5, tmp_path / "steps" / "w5.yaml")
    assert list(derived.pools) == ["small"]
    pool = derived.pools["small"]
    assert [s.threads for s in pool.slots] == [1, 2, 1, 2, 1]
    assert pool.model.path == tiny_model_dir.resolve() and pool.worker_timeout == 30
    assert pool.bind.host == derived.front.bind.host == "127.0.0.1"
    assert {pool.bind.port, derived.front.bind.port}.isdisjoint({9101, 9102, 18000})
    assert derived.limits == layout.limits and derived.defaults == layout.defaults


def test_a_step_layout_keeps_the_pools_engine_and_batch(
        write_layout: LayoutFactory, tmp_path: Path) -> None:
    layout = load_layout(write_layout(pools={"small": {
        "bind": "127.0.0.1:9101", "engine": "ctranslate2", "dtype": None,
        "quantization": "int8_float32", "batch": 7, "slots": ["cpu"]}}))
    pool = step_layout(layout, layout.pools["small"], 2, tmp_path / "w2.yaml").pools["small"]
    assert (pool.engine, pool.quantization, pool.batch) == ("ctranslate2", "int8_float32", 7)


def test_without_workers_the_count_is_capped_by_cores_and_memory(
        write_layout: LayoutFactory) -> None:
    layout = load_layout(write_layout(pools={"small": {"bind": "127.0.0.1:9101",
                                                       "slots": ["cpu"]}}))
    pool = layout.pools["small"]
    workers, why = default_max_workers(pool, fit_report(layout, [pool]), n_samples=3)
    assert workers == min(max(3, 2 * cores()), MAX_DEFAULT_WORKERS)
    assert why.startswith(f"--workers not given: {workers} = the least of compute (cpu: ")
    assert "memory fit " in why


def test_reports_hold_one_row_per_step(tmp_path: Path) -> None:
    steps = [step(1, 20, 0.4), step(2, 38, 0.5)]
    choice = recommend(steps, SETTINGS)
    report = {"steps": [s.row() for s in steps], "recommendation": choice.__dict__}
    write_reports(tmp_path, report, steps, SETTINGS, "small", choice.workers)
    saved = json.loads((tmp_path / "capacity.json").read_text())
    assert [s["completions"] for s in saved["steps"]] == [60, 114]
    assert saved["steps"][1]["worker_rss_bytes"] == [400 * 2**20] * 2
    with (tmp_path / "capacity.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["workers"] for r in rows] == ["1", "2"]
    assert rows[1]["worker_rss_bytes"] == f"{400 * 2**20};{400 * 2**20}"
    assert (tmp_path / "capacity.png").read_bytes().startswith(b"\x89PNG")
    lines = table(steps).splitlines()
    assert len(lines) == 3 and lines[2].split()[:3] == ["2", "3.80", "11.40"]
