"""The closed-loop load generator against a stdlib HTTP stand-in for the front."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from fanout.tools.load import NO_ANSWER, LoadResult, Record, percentile, run_load
from fanout.tools.ports import free_port


class Front:
    """Answers /autocomplete with ``n_samples`` sentences; every ``fail_every``-th gets 504."""

    def __init__(self, delay: float = 0.01, fail_every: int = 0, hold_until: int = 0) -> None:
        """``hold_until``: no answer before that many different contexts came in."""
        self.seen = 0
        self.contexts: set[str] = set()
        self.held = threading.Event()
        if not hold_until:
            self.held.set()
        self.lock = threading.Lock()
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as gunicorn's gthread front does

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with front.lock:
                    front.seen += 1
                    front.contexts.add(body["context"])
                    if len(front.contexts) >= hold_until:
                        front.held.set()
                    failed = fail_every and front.seen % fail_every == 0
                front.held.wait(timeout=60)  # a guard against a hang, not a pace
                time.sleep(delay)
                status, answer = (504, {"title": "late"}) if failed else (
                    200, {"sentences": [{"value": "x"}] * body["n_samples"]})
                payload = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def front() -> Iterator[Front]:
    running = Front(fail_every=5)
    yield running
    running.server.shutdown()
    running.server.server_close()


BODY = {"context": "Hello", "n_samples": 3}


def test_every_request_sent_gets_one_record(front: Front) -> None:
    result = run_load(front.url, BODY, users=3, duration=1.0, think=0.02)
    assert result.requests == front.seen >= 3
    assert {r.user for r in result.records} == {0, 1, 2}
    assert result.errors_by_status == {504: front.seen // 5}
    assert result.completions == 3 * result.ok_requests
    assert result.ok_requests + result.errors == result.requests
    assert result.completions_per_second == pytest.approx(
        result.completions / result.duration)
    # No request starts after the deadline; the run lasts until the last answer.
    assert all(r.started < 1.0 for r in result.records)
    assert result.duration == pytest.approx(max(r.started + r.latency for r in result.records))


def test_given_a_body_each_users_send_their_own() -> None:
    # Nothing is answered before three contexts came in: each user has one request in
    # flight, so all three must have sent theirs.
    front = Front(hold_until=3)
    bodies = [{**BODY, "context": f"user {user}"} for user in range(3)]
    result = run_load(front.url, bodies, users=3, duration=60.0, max_requests=6)
    front.server.shutdown()
    front.server.server_close()
    assert result.requests == 6 and result.ok_requests == 6
    assert front.contexts == {"user 0", "user 1", "user 2"}


def test_the_request_budget_bounds_the_run(front: Front) -> None:
    started = time.monotonic()
    result = run_load(front.url, BODY, users=4, duration=30.0, max_requests=7)
    assert result.requests == front.seen == 7
    assert time.monotonic() - started < 15  # the budget ended it, not the 30 s


def test_no_answer_is_an_error_with_status_zero() -> None:
    result = run_load(f"http://127.0.0.1:{free_port()}", BODY, users=2, duration=5.0,
                      max_requests=6, timeout=2.0)
    assert result.requests == result.errors == 6
    assert result.errors_by_status == {NO_ANSWER: 6}
    assert all(r.error == "ConnectionError" for r in result.records)
    assert result.completions == 0 and result.latency(50) is None


def test_figures_come_from_the_successful_records() -> None:
    records = tuple([Record(0, i, latency=0.1 * (i + 1), status=200, sentences=3)
                     for i in range(10)]
                    + [Record(1, 0.5, latency=9.0, status=504, sentences=0),
                       Record(1, 0.7, latency=0.01, status=NO_ANSWER, sentences=0,
                              error="ConnectionError")])
    result = LoadResult(users=2, think=0.0, duration=10.0, records=records)
    assert (result.requests, result.ok_requests, result.errors) == (12, 10, 2)
    assert result.completions == 30 and result.completions_per_second == 3.0
    assert result.requests_per_second == 1.2
    assert result.errors_by_status == {0: 1, 504: 1}
    assert result.latency(50) == pytest.approx(0.55)  # the slow 504 does not count
    assert result.latency(100) == pytest.approx(1.0)
    summary = result.summary()
    assert summary["errors_by_status"] == {"0": 1, "504": 1}
    assert summary["p50_s"] <= summary["p95_s"] <= summary["p99_s"]


def test_percentile_interpolates_like_numpy() -> None:
    assert percentile([], 50) is None
    assert percentile([4.0], 99) == 4.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([3.0, 1.0, 2.0], 0) == 1.0
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 95) == pytest.approx(4.8)
