"""The fan-out client against a small stdlib HTTP server standing in for a worker tier."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from fanout.layout import Bind, Model, Pool, Slot
from fanout.params import AutocompleteRequest, GenerationParams
from fanout.ports import free_port
from frontend_api.fanout import FanoutClient, WorkerTierError

# (status, body) for one /generate request, given its JSON body.
Behaviour = Callable[[dict[str, Any]], tuple[int, Any]]


def good(body: dict[str, Any]) -> tuple[int, Any]:
    return 200, {"text": body["context"][::-1], "tokens": 3, "finish_reason": "length",
                 "time": 0.01, "seed": body.get("seed", 0),
                 "worker": {"pid": 1, "slot": 0, "device": "cpu"}}


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up (the deadline tests) is expected, not an error


class WorkerTier:
    """A threaded HTTP server whose /generate answers as ``behaviour`` says."""

    def __init__(self) -> None:
        self.behaviour: Behaviour = good
        tier = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status, answer = tier.behaviour(body)
                payload = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:
                payload = json.dumps({"ready_slots": {"0": 1, "1": 2}}).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = QuietServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def bind(self) -> Bind:
        return Bind("127.0.0.1", self.server.server_address[1])


def pool(bind: Bind, workers: int = 2) -> Pool:
    return Pool(name="small", model=Model("m", None), dtype="float32", bind=bind,
                slots=tuple(Slot(i, "cpu") for i in range(workers)))


@pytest.fixture
def tier() -> Iterator[WorkerTier]:
    running = WorkerTier()
    yield running
    running.server.shutdown()
    running.server.server_close()


@pytest.fixture
def client(tier: WorkerTier) -> Iterator[FanoutClient]:
    made = FanoutClient({"small": pool(tier.bind)}, threads=8, network_slack=0.5)
    yield made
    made.close()


def request(n: int = 3, max_time: float = 1.0, seed: int | None = 5) -> AutocompleteRequest:
    return AutocompleteRequest("small", n, GenerationParams(
        context="abc", length=3, temperature=1.0, top_k=40, top_p=0.9, max_time=max_time,
        seed=seed))


def test_samples_come_back_in_order_with_their_seeds(client: FanoutClient) -> None:
    samples = client.complete(request(n=4))
    assert [s.text for s in samples] == ["cba"] * 4
    assert [s.seed for s in samples] == [5, 6, 7, 8]
    assert all(s.round_trip >= 0 for s in samples)


@pytest.mark.parametrize(("behaviour", "status", "words"), [
    (lambda b: (200, {"text": "x"}), 502, "answered without 'time'"),
    (lambda b: (500, b"<html>oops</html>"), 502, "answered 500"),
    (lambda b: (503, {"title": "Loading", "description": "warming up"}), 502, "warming up"),
    (lambda b: (400, {"title": "Invalid parameter", "description": "length: too long",
                      "field": "length"}), 400, "length: too long"),
])
def test_worker_failures_become_worker_tier_errors(
        tier: WorkerTier, client: FanoutClient, behaviour: Behaviour, status: int,
        words: str) -> None:
    tier.behaviour = behaviour
    with pytest.raises(WorkerTierError) as caught:
        client.complete(request())
    assert caught.value.status == status and words in caught.value.description


def test_the_deadline_holds_when_workers_stall(tier: WorkerTier, client: FanoutClient) -> None:
    def stall(body: dict[str, Any]) -> tuple[int, Any]:
        time.sleep(3)
        return good(body)
    tier.behaviour = stall
    started = time.monotonic()
    with pytest.raises(WorkerTierError) as caught:
        client.complete(request(max_time=0.3))
    assert caught.value.status == 504
    assert time.monotonic() - started < 0.3 + 0.5 + 0.5


def test_one_failed_sample_answers_at_once(tier: WorkerTier, client: FanoutClient) -> None:
    def first_fails(body: dict[str, Any]) -> tuple[int, Any]:
        if body["seed"] == 5:
            return 500, b"broken"
        time.sleep(2)
        return good(body)
    tier.behaviour = first_fails
    started = time.monotonic()
    with pytest.raises(WorkerTierError, match="answered 500"):
        client.complete(request(max_time=5.0))
    assert time.monotonic() - started < 1.5


def test_pool_health_counts_ready_workers(tier: WorkerTier) -> None:
    closed = Bind("127.0.0.1", free_port())
    client = FanoutClient({"small": pool(tier.bind, workers=2),
                           "partial": pool(tier.bind, workers=3),
                           "gone": pool(closed)}, threads=4, network_slack=0.5)
    try:
        health = client.health()
    finally:
        client.close()
    assert {name: (h["status"], h["ready_workers"]) for name, h in health.items()} == {
        "small": ("ok", 2), "partial": ("degraded", 2), "gone": ("down", 0)}


def test_a_host_proxy_setting_never_reroutes_worker_traffic(
        tier: WorkerTier, monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy meant for the host's outbound traffic; nothing listens on it.
    dead_proxy = f"http://127.0.0.1:{free_port()}"
    for variable in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(variable, dead_proxy)
    for variable in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(variable, raising=False)
    client = FanoutClient({"small": pool(tier.bind)}, threads=4, network_slack=0.5)
    try:
        assert [s.text for s in client.complete(request(n=2))] == ["cba", "cba"]
    finally:
        client.close()
