"""Real faults against real tiers: workers killed, hung and gone, clients that leave,
a pool that goes down, and more load than the front accepts.

The model is a tiny random GPT-2 with a 2,048-token window, so a generation lasts as
long as its ``max_time`` says: long enough to kill or stop its worker half-way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from fanout.tools.ports import free_port
from fanout.tools.tiny_model import make_tiny_model
from tests.conftest import layout_document
from tests.integration.servers import RunningTiers, paused, started

pytestmark = pytest.mark.integration

LONG = {"length": 2000}  # every long generation here ends by its max_time
# What a deadline may overrun by on a busy machine: the front's threads must be scheduled.
SCHEDULING = 2.0


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningTiers]:
    folder = tmp_path_factory.mktemp("faults")
    model = make_tiny_model(folder / "long-window", window=2048)
    document = layout_document(
        model,
        pools={"small": {"bind": f"127.0.0.1:{free_port()}",
                         "slots": [{"device": "cpu", "threads": 1}] * 3}},
        front={"bind": f"127.0.0.1:{free_port()}", "network_slack": 3.0, "threads": 6,
               "max_inflight": 3, "max_queued_samples": 3},
        generation={"limits": {"length": 2000, "max_time": 10.0}},
    )
    with started(document, folder) as running:
        try:
            yield running
        finally:
            for pid in running.ready_slots("small").values():
                _signal(pid, signal.SIGCONT)  # never leave a stopped worker behind


@pytest.fixture
def tiers(faulty: RunningTiers) -> RunningTiers:
    """The module's tiers, with every worker ready (a test may have killed one)."""
    faulty.wait_ready()
    return faulty


def post(tiers: RunningTiers, **body: Any) -> requests.Response:
    return requests.post(f"{tiers.front_url}/autocomplete", timeout=30,
                         json={"context": "The nation", "seed": 1, **body})


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def while_posting(tiers: RunningTiers, busy: list[int], action: Any,
                  **body: Any) -> tuple[requests.Response, float]:
    """Send a request, do ``action`` once the workers ``busy`` serve it, return the answer."""
    with ThreadPoolExecutor(1) as executor:
        started = time.monotonic()
        sent = executor.submit(post, tiers, **body)
        tiers.wait_serving("small", busy)
        action()
        response = sent.result()
    return response, time.monotonic() - started


def abandoned_lines(tiers: RunningTiers, request_id: str, count: int) -> list[dict[str, Any]]:
    """The pool's log lines for ``request_id``: its workers stopped, they did not finish."""
    lines = tiers.request_lines("pool-small", request_id, count)
    assert [line["finish_reason"] for line in lines] == ["abandoned"] * count, lines
    return lines


def test_a_worker_killed_mid_generation_costs_no_sample(tiers: RunningTiers) -> None:
    ready = tiers.ready_slots("small")
    victim, spare = ready["0"], ready["2"]

    def kill_with_a_worker_free() -> None:
        _signal(spare, signal.SIGCONT)  # in accept() again: it takes the resent sample
        _signal(victim, signal.SIGKILL)

    # Worker 2 stopped, the two samples go to workers 0 and 1 and each lasts its whole
    # max_time: the victim is seen serving long before it could finish, however slow the
    # machine. The resent sample starts at once on worker 2 and, though it gets the whole
    # max_time again, ends well within the deadline (max_time + network_slack).
    _signal(spare, signal.SIGSTOP)
    try:
        response, _ = while_posting(tiers, [victim, ready["1"]], kill_with_a_worker_free,
                                    n_samples=2, max_time=3.0, **LONG)
    finally:
        _signal(spare, signal.SIGCONT)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["partial"] is False and len(body["sentences"]) == 2
    assert spare in {s["worker"]["pid"] for s in body["sentences"]}
    assert victim not in {s["worker"]["pid"] for s in body["sentences"]}
    assert "sending the sample again" in tiers.logs["front"].read_text()
    # The master respawns the worker into the same slot, and it serves again.
    deadline = time.monotonic() + 60
    while tiers.ready_slots("small").get("0") in (None, victim):
        assert time.monotonic() < deadline, tiers.log_tail()
        time.sleep(0.2)
    now = tiers.ready_slots("small")
    with paused([now["1"], now["2"]]):  # only the new worker can take it
        [sentence] = post(tiers, n_samples=1, length=5).json()["sentences"]
    assert sentence["worker"]["pid"] == now["0"]


def test_a_hung_worker_leaves_a_partial_answer_by_the_deadline(tiers: RunningTiers) -> None:
    stuck = tiers.ready_slots("small")["1"]
    try:
        response, elapsed = while_posting(tiers, [stuck], lambda: _signal(stuck, signal.SIGSTOP),
                                          n_samples=3, max_time=1.0, **LONG)
    finally:
        _signal(stuck, signal.SIGCONT)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["partial"] is True and len(body["sentences"]) == 2
    assert [f["status"] for f in body["failed"]] == [504]
    assert stuck not in {s["worker"]["pid"] for s in body["sentences"]}
    # By the deadline (max_time + network_slack), not when the worker resumed (never, had
    # the test waited for the answer first).
    assert elapsed < 1.0 + 3.0 + SCHEDULING
    # Resumed, the worker sees its sample was abandoned and stops it.
    request_id = response.headers["X-Request-ID"]
    [line] = [line for line in tiers.request_lines("pool-small", request_id, 3)
              if line["slot"] == 1]
    assert line["finish_reason"] == "abandoned"
    again = post(tiers, n_samples=3, length=5)
    assert again.status_code == 200 and not again.json()["partial"]


def test_no_sample_by_the_deadline_is_a_504(tiers: RunningTiers) -> None:
    workers = list(tiers.ready_slots("small").values())
    def stop_all() -> None:
        for pid in workers:
            _signal(pid, signal.SIGSTOP)

    # Long enough that the workers are seen serving before their samples could end,
    # however loaded the machine (0.5 s was not, under two busy cores).
    max_time = 3.0
    try:
        response, elapsed = while_posting(tiers, workers, stop_all, n_samples=3,
                                          max_time=max_time, **LONG)
    finally:
        for pid in workers:
            _signal(pid, signal.SIGCONT)

    assert response.status_code == 504
    assert "none of 3 samples" in response.json()["description"]
    assert elapsed < max_time + 3.0 + SCHEDULING
    # The abandoned samples did not run on: each worker stopped its own.
    abandoned_lines(tiers, response.headers["X-Request-ID"], 3)
    assert post(tiers, n_samples=3, length=5).status_code == 200


def test_a_client_that_leaves_leaves_no_work_behind(tiers: RunningTiers) -> None:
    host, port = tiers.layout.front.bind.host, tiers.layout.front.bind.port
    workers = list(tiers.ready_slots("small").values())
    body = (b'{"context": "The nation", "n_samples": 3, "length": 2000, "max_time": 8}')
    with socket.create_connection((host, port)) as editor:
        editor.sendall(b"POST /autocomplete HTTP/1.1\r\nHost: x\r\n"
                       b"X-Request-ID: client-that-leaves\r\n"
                       b"Content-Type: application/json\r\n"
                       b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        tiers.wait_serving("small", workers)  # the three workers are generating for it

    # Each worker stopped its sample, rather than generate on for 8 s.
    lines = abandoned_lines(tiers, "client-that-leaves", 3)
    assert all(line["tokens"] < 2000 for line in lines)
    assert "client left" in tiers.logs["front"].read_text()
    assert post(tiers, n_samples=3, length=5).status_code == 200


def test_past_its_bounds_the_front_answers_503_at_once(tiers: RunningTiers) -> None:
    # 3 workers, 3 queued samples: two requests of 3 long samples fill the pool. The
    # workers are stopped first, so no admitted sample can end (however slow this machine)
    # before the front has counted both requests and the test has knocked three times;
    # the front's bounds count samples it sent, whatever the workers are doing.
    workers = list(tiers.ready_slots("small").values())
    with ThreadPoolExecutor(2) as executor:
        with paused(workers):
            admitted = [executor.submit(post, tiers, n_samples=3, max_time=1.5, **LONG)
                        for _ in range(2)]
            tiers.wait_inflight(2)
            refused = [timed_post(tiers, n_samples=3, max_time=1.5, **LONG) for _ in range(3)]
        assert [future.result().status_code for future in admitted] == [200, 200]

    assert all(response.status_code == 503 and response.headers["Retry-After"] == "1"
               and elapsed < 1.0 for response, elapsed in refused), refused
    health = requests.get(f"{tiers.front_url}/health", timeout=5).json()
    assert health["load"]["inflight"] == 0 and health["load"]["rejected"] >= 3
    assert post(tiers, n_samples=3, length=5).status_code == 200


def timed_post(tiers: RunningTiers, **body: Any) -> tuple[requests.Response, float]:
    started = time.monotonic()
    return post(tiers, **body), time.monotonic() - started


def test_a_pool_that_goes_down_is_a_prompt_503_and_comes_back(tiers: RunningTiers) -> None:
    tiers.stop_tier("pool-small")
    try:
        started = time.monotonic()
        response = post(tiers, n_samples=3)
        assert time.monotonic() - started < 1.0
        assert response.status_code == 503 and int(response.headers["Retry-After"]) > 0
        assert "'small' is down" in response.json()["description"]
        health = requests.get(f"{tiers.front_url}/health", timeout=5)
        assert health.status_code == 503
        assert health.json()["pools"]["small"]["status"] == "down"
    finally:
        tiers.start("pool-small")
    tiers.wait_ready()
    assert post(tiers, n_samples=3, length=5).status_code == 200
    assert requests.get(f"{tiers.front_url}/health", timeout=5).status_code == 200
