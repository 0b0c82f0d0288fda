"""The front's /metrics and request log, through falcon.testing: with an in-process fan-out,
and with the real fan-out client against a stdlib HTTP server standing in for a pool."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import falcon.testing
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from fanout.layout import Layout, load_layout
from fanout.observe import REQUEST_ID_HEADER
from frontend_api.access import read_api_keys
from frontend_api.app import create_app
from frontend_api.fanout import FanoutClient
from tests.conftest import LayoutFactory
from tests.frontend_api.test_fanout import DROP, WorkerTier, good, pool
from tests.frontend_api.test_resources import EchoFanout


@pytest.fixture
def layout(write_layout: LayoutFactory) -> Layout:
    return load_layout(write_layout(pools={
        "small": {"bind": "127.0.0.1:9101", "slots": ["cpu", "cpu", "cpu"]}},
        front={"threads": 4, "max_inflight": 2}))


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Delta:
    """How much the named samples moved while the block ran."""

    def __init__(self, *samples: tuple[str, dict[str, str]]) -> None:
        self.samples = samples
        self.before = [value(name, **labels) for name, labels in samples]

    def __call__(self) -> list[float]:
        return [value(name, **labels) - before
                for (name, labels), before in zip(self.samples, self.before, strict=True)]


def autocomplete_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    lines = [vars(r)["fields"] for r in caplog.records if r.name == "fanout.requests"]
    return [line for line in lines if line["route"] == "/autocomplete"]


def test_metrics_is_prometheus_text_and_counts_requests_by_route(layout: Layout) -> None:
    app = falcon.testing.TestClient(create_app(layout, EchoFanout()))
    ok = {"route": "/autocomplete", "method": "POST", "status": "200"}
    moved = Delta(("fanout_front_requests_total", ok),
                  ("fanout_front_request_duration_seconds_count", {"route": "/autocomplete"}),
                  ("fanout_front_requests_total", {"route": "unmatched", "method": "GET",
                                                   "status": "404"}))

    for n in (1, 3):
        assert app.simulate_post("/autocomplete", json={"context": "x", "n_samples": n}
                                 ).status_code == 200
    app.simulate_get("/no/such/path-7c1e")
    page = app.simulate_get("/metrics")

    assert page.status_code == 200 and page.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(page.text)}
    assert {"fanout_front_requests", "fanout_front_request_duration_seconds",
            "fanout_front_requests_in_flight", "fanout_front_samples_per_request",
            "fanout_front_rejections", "fanout_front_sample_failures",
            "fanout_front_sample_retries", "process_resident_memory_bytes"} <= set(families)
    assert moved() == [2, 2, 1]
    routes = {s.labels["route"] for s in families["fanout_front_requests"].samples}
    assert "/no/such/path-7c1e" not in routes  # bounded: templates only


def test_a_refused_key_is_counted_on_its_route_and_metrics_stay_open(layout: Layout) -> None:
    keyed = falcon.testing.TestClient(create_app(layout, EchoFanout(),
                                                 read_api_keys("secret-key", None)))
    refused = {"route": "/autocomplete", "method": "POST", "status": "401"}
    moved = Delta(("fanout_front_requests_total", refused))

    assert keyed.simulate_post("/autocomplete", json={"context": "x"}).status_code == 401
    assert keyed.simulate_get("/metrics").status_code == 200  # no key needed
    assert moved() == [1]


def test_in_flight_requests_and_admission_rejections(layout: Layout) -> None:
    fanout = EchoFanout(hold=threading.Event())
    app = falcon.testing.TestClient(create_app(layout, fanout))
    base = value("fanout_front_requests_in_flight")
    moved = Delta(("fanout_front_rejections_total", {"pool": "small", "bound": "inflight"}),
                  ("fanout_front_requests_total", {"route": "/autocomplete", "method": "POST",
                                                   "status": "503"}))
    held = [threading.Thread(target=app.simulate_post, args=("/autocomplete",),
                             kwargs={"json": {"context": "x", "n_samples": 1}})
            for _ in range(2)]
    for thread in held:
        thread.start()
    while len(fanout.seen) < 2:
        time.sleep(0.01)

    assert value("fanout_front_requests_in_flight") - base == 2
    assert app.simulate_post("/autocomplete", json={"context": "x"}).status_code == 503
    fanout.hold.set()  # type: ignore[union-attr]
    for thread in held:
        thread.join(10)
    assert value("fanout_front_requests_in_flight") == base
    assert moved() == [1, 1]


@pytest.fixture
def front(layout: Layout, tier: WorkerTier) -> Iterator[falcon.testing.TestClient]:
    """The front with its real fan-out client, sending to the stand-in pool."""
    client = FanoutClient({"small": pool(tier.bind, workers=3)}, threads=8, network_slack=0.5)
    yield falcon.testing.TestClient(create_app(layout, client))
    client.close()


def test_the_request_id_reaches_every_worker_and_the_log_line_has_the_fanout(
        front: falcon.testing.TestClient, tier: WorkerTier,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "fanout.requests")
    moved = Delta(("fanout_front_samples_per_request_count", {"pool": "small"}),
                  ("fanout_front_samples_per_request_sum", {"pool": "small"}),
                  ("fanout_front_samples_per_request_bucket", {"pool": "small", "le": "2.0"}))
    result = front.simulate_post("/autocomplete", json={"context": "abc", "n_samples": 3},
                                 headers={REQUEST_ID_HEADER: "editor-1.a_b"})

    assert result.status_code == 200 and result.headers[REQUEST_ID_HEADER] == "editor-1.a_b"
    assert tier.request_ids == ["editor-1.a_b"] * 3
    [line] = autocomplete_lines(caplog)
    assert line["request_id"] == "editor-1.a_b" and line["status"] == 200
    assert (line["pool"], line["n_samples"], line["partial"]) == ("small", 3, False)
    assert moved() == [1, 3, 0]


def test_a_generated_id_is_the_one_the_workers_get(front: falcon.testing.TestClient,
                                                   tier: WorkerTier) -> None:
    result = front.simulate_post("/autocomplete", json={"context": "abc", "n_samples": 2},
                                 headers={REQUEST_ID_HEADER: "not valid!"})
    answered = result.headers[REQUEST_ID_HEADER]
    assert answered != "not valid!" and len(answered) == 32
    assert tier.request_ids == [answered] * 2


def test_retries_and_failed_samples_are_counted_by_pool(
        front: falcon.testing.TestClient, tier: WorkerTier,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "fanout.requests")
    drops = {6: 1}  # seed 6's first worker dies mid-generation; the retry is answered

    def flaky(body: dict[str, Any]) -> tuple[int, Any]:
        if drops.get(body["seed"], 0) > 0:
            drops[body["seed"]] -= 1
            return DROP, None
        return (500, b"broken") if body["seed"] == 7 else good(body)
    tier.behaviour = flaky
    moved = Delta(("fanout_front_sample_retries_total", {"pool": "small"}),
                  ("fanout_front_sample_failures_total", {"pool": "small", "status": "502"}))

    result = front.simulate_post("/autocomplete",
                                 json={"context": "abc", "n_samples": 3, "seed": 5})

    assert result.status_code == 200 and result.json["partial"] is True
    # Seed 6 was sent again once; seed 7 answered 500 three times (sent again twice).
    assert moved() == [1 + 2, 1]
    [line] = autocomplete_lines(caplog)
    assert line["partial"] is True
