"""A worker's /metrics and request log, through falcon.testing with the real tiny model.

Outside gunicorn there is no metrics directory, so a worker serves its own process's
metrics; tests/worker_api/test_gunicorn_conf.py and tests/integration/test_metrics.py
cover the directory the workers share.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import falcon.testing
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from fanout.layout import Layout, Model, Slot, load_layout
from fanout.observe import REQUEST_ID_HEADER
from tests.conftest import LayoutFactory
from worker_api import metrics
from worker_api.app import create_app
from worker_api.engines.transformers_engine import TransformersEngine
from worker_api.resources import WorkerIdentity
from worker_api.slots import METRICS_DIR_ENV, SlotBoard


@pytest.fixture
def layout(write_layout: LayoutFactory) -> Layout:
    return load_layout(write_layout(pools={"small": {"bind": "127.0.0.1:9101",
                                                     "slots": ["cpu", "cpu"]}}))


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> TransformersEngine:
    return TransformersEngine(Model(str(tiny_model_dir), tiny_model_dir), "cpu", "float32")


@pytest.fixture
def worker(layout: Layout, model: TransformersEngine, tmp_path: Path,
           monkeypatch: pytest.MonkeyPatch) -> falcon.testing.TestClient:
    monkeypatch.delenv(METRICS_DIR_ENV, raising=False)
    pool = layout.default_pool
    return falcon.testing.TestClient(
        create_app(model, layout, WorkerIdentity(pool, pool.slots[1]), SlotBoard(tmp_path)))


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def request_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [vars(r)["fields"] for r in caplog.records if r.name == "fanout.requests"]


def test_a_generation_is_counted_timed_and_logged_with_its_tokens(
        worker: falcon.testing.TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "fanout.requests")
    ok = {"route": "/generate", "method": "POST", "status": "200", "slot": "1"}
    before = [value("fanout_worker_requests_total", **ok),
              value("fanout_worker_generated_tokens_total", slot="1"),
              value("fanout_worker_generation_seconds_count", slot="1"),
              value("fanout_worker_tokens_per_second_count", slot="1")]

    result = worker.simulate_post("/generate", json={"context": "Hello", "length": 7,
                                                     "max_time": 10, "seed": 1},
                                  headers={REQUEST_ID_HEADER: "front-abc"})

    assert result.status_code == 200 and result.json["tokens"] == 7
    assert result.headers[REQUEST_ID_HEADER] == "front-abc"  # echoed
    after = [value("fanout_worker_requests_total", **ok),
             value("fanout_worker_generated_tokens_total", slot="1"),
             value("fanout_worker_generation_seconds_count", slot="1"),
             value("fanout_worker_tokens_per_second_count", slot="1")]
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 7, 1, 1]
    assert value("fanout_worker_memory_bytes", slot="1", device="cpu", kind="rss") > 0
    [line] = request_lines(caplog)
    assert (line["route"], line["status"], line["request_id"]) == ("/generate", 200,
                                                                   "front-abc")
    assert (line["slot"], line["tokens"]) == (1, 7)


def test_a_streamed_generation_counts_its_tokens_too(
        worker: falcon.testing.TestClient) -> None:
    before = value("fanout_worker_generated_tokens_total", slot="1")
    result = worker.simulate_post("/generate/stream", json={"context": "Hello", "length": 5,
                                                            "seed": 2})
    done = json.loads(result.text.splitlines()[-1])
    assert done["done"] is True
    assert value("fanout_worker_generated_tokens_total", slot="1") - before == done["tokens"]


def test_a_refused_generation_is_counted_by_status_with_no_tokens(
        worker: falcon.testing.TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "fanout.requests")
    refused = {"route": "/generate", "method": "POST", "status": "400", "slot": "1"}
    before = value("fanout_worker_requests_total", **refused)
    result = worker.simulate_post("/generate", json={"context": "x", "length": 256})
    assert result.status_code == 400
    assert value("fanout_worker_requests_total", **refused) - before == 1
    [line] = request_lines(caplog)
    assert line["slot"] == 1 and "tokens" not in line
    assert len(line["request_id"]) == 32  # none came: the worker made one


def test_metrics_page_is_prometheus_text(worker: falcon.testing.TestClient) -> None:
    worker.simulate_get("/health")
    page = worker.simulate_get("/metrics")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(page.text)}
    assert {"fanout_worker_requests", "fanout_worker_generation_seconds",
            "fanout_worker_generated_tokens", "fanout_worker_tokens_per_second",
            "fanout_worker_restarts", "fanout_worker_model_load_seconds",
            "fanout_worker_memory_bytes"} <= set(families)
    routes = {s.labels["route"] for s in families["fanout_worker_requests"].samples}
    assert "/health" in routes


def test_a_boot_sets_the_load_time_and_counts_a_restart_only_for_a_respawn() -> None:
    slot = Slot(7, "cpu")
    before = value("fanout_worker_restarts_total", slot="7")
    metrics.record_boot(slot, 2.5, restarted=False, memory={"rss_bytes": 1000})
    # The series is there from the first boot, at 0, so increase() sees the first restart.
    assert REGISTRY.get_sample_value("fanout_worker_restarts_total", {"slot": "7"}) == before
    assert value("fanout_worker_model_load_seconds", slot="7") == 2.5
    metrics.record_boot(slot, 3.0, restarted=True,
                        memory={"rss_bytes": 2000, "cuda_allocated_bytes": 5})
    assert value("fanout_worker_restarts_total", slot="7") - before == 1
    assert value("fanout_worker_model_load_seconds", slot="7") == 3.0
    assert value("fanout_worker_memory_bytes", slot="7", device="cpu", kind="rss") == 2000
    assert value("fanout_worker_memory_bytes", slot="7", device="cpu",
                 kind="cuda_allocated") == 5


def test_without_a_metrics_directory_a_worker_serves_its_own_registry(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(METRICS_DIR_ENV, raising=False)
    assert metrics.metrics_page().registry is REGISTRY
    monkeypatch.setenv(METRICS_DIR_ENV, os.getcwd())
    assert metrics.metrics_page().registry is not REGISTRY
