"""The edge (nginx) in front of a real front and pool: slow and silent clients wait at the
edge, never in the front's threads; its own answers are the front's JSON shapes.

Every other integration test reaches the front through the edge too (``RunningTiers``
starts it with the front), so streaming, 401, 503 + Retry-After and a client that leaves
are covered there.
"""

from __future__ import annotations

import socket
import statistics
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from fanout.layout import API_KEYS_ENV
from fanout.tools.bench.slow_clients import Hostile
from fanout.tools.ports import free_port
from tests.conftest import layout_document
from tests.integration.paced_worker import PACED_APP, PIECES, Gates
from tests.integration.servers import RunningTiers

pytestmark = pytest.mark.integration

TIMEOUT = 3  # the edge's header and body timeouts here, in seconds
TAB = {"context": "The nation", "n_samples": 3, "length": 2}


def start(folder: Path, model: Path, edge: dict[str, Any]) -> RunningTiers:
    document = layout_document(
        model, pools={"small": {"bind": f"127.0.0.1:{free_port()}",
                                "slots": [{"device": "cpu", "threads": 1}] * 3}},
        front={"bind": f"127.0.0.1:{free_port()}", "threads": 8, "max_inflight": 7,
               "max_body_bytes": 4096},
        edge=edge)
    path = folder / "gpu_layout.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    running = RunningTiers(path, folder)
    try:
        running.wait_ready()
    except BaseException:
        running.stop()
        raise
    return running


@pytest.fixture(scope="module")
def tiers(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
          ) -> Iterator[RunningTiers]:
    running = start(tmp_path_factory.mktemp("edge"), tiny_model_dir,
                    {"header_timeout": TIMEOUT, "body_timeout": TIMEOUT})
    yield running
    running.stop()


def tab_latencies(url: str, count: int) -> list[float]:
    """``count`` Tabs one after another, as one writer presses them; every one answered."""
    seconds = []
    with requests.Session() as session:
        for _ in range(count):
            started = time.perf_counter()
            response = session.post(f"{url}/autocomplete", json=TAB, timeout=30)
            seconds.append(time.perf_counter() - started)
            assert response.status_code == 200, response.text
            assert len(response.json()["sentences"]) == 3
    return seconds


def test_slow_and_silent_clients_do_not_hold_up_the_writers(tiers: RunningTiers) -> None:
    bind = (tiers.layout.front.bind.host, tiers.layout.front.bind.port)
    tab_latencies(tiers.front_url, 3)  # warm
    before = statistics.median(tab_latencies(tiers.front_url, 15))
    # More connections than the front has threads, many times over.
    hostile = Hostile(bind, idle=200, headers=40, bodies=16)
    try:
        during = statistics.median(tab_latencies(tiers.front_url, 15))
    finally:
        hostile.close()
    after = statistics.median(tab_latencies(tiers.front_url, 15))
    # The quiet p50 is taken on both sides of the attack: the machine's own drift is not
    # the attack's doing.
    quiet = max(before, after)
    assert during <= 1.5 * quiet, (before, during, after)


def test_the_edge_hangs_up_on_clients_too_slow_to_send_a_request(tiers: RunningTiers) -> None:
    bind = (tiers.layout.front.bind.host, tiers.layout.front.bind.port)
    # (A body that trickles in just fast enough is held by the edge, at the cost of a
    # little memory: the test above shows it costs the writers nothing.)
    hostile = Hostile(bind, idle=3, headers=3, bodies=0)
    try:
        for sock in hostile.idle + hostile.headers:
            sock.settimeout(60 * TIMEOUT)  # a bound on the test, not on the edge
            assert hung_up(sock)
    finally:
        hostile.close()


def hung_up(sock: socket.socket) -> bool:
    """Wait for the edge to close ``sock``: a reset (it resets timed-out connections, to
    free their memory at once) or an end of stream, with no answer but an error."""
    answer = b""
    try:
        while chunk := sock.recv(4096):
            answer += chunk
    except ConnectionResetError:
        pass
    return not answer.startswith(b"HTTP/1.1 2")


def test_a_body_too_large_is_refused_by_the_edge_as_the_front_would(
        tiers: RunningTiers) -> None:
    big = {"context": "x" * 5000}
    front = tiers.layout.front_listen.url
    for path in ("/autocomplete", "/v1/completions"):
        by_edge = requests.post(f"{tiers.front_url}{path}", json=big, timeout=10)
        by_front = requests.post(f"{front}{path}", json=big, timeout=10)
        assert by_edge.status_code == by_front.status_code == 413
        assert by_edge.json() == by_front.json()
        assert by_edge.headers["Content-Type"].startswith("application/json")


def test_the_front_logs_the_client_the_edge_saw_and_the_request_id(
        tiers: RunningTiers) -> None:
    request_id = f"edge-{uuid.uuid4().hex[:12]}"
    response = requests.post(f"{tiers.front_url}/autocomplete", json=TAB, timeout=30,
                             headers={"X-Request-ID": request_id,
                                      "X-Forwarded-For": "203.0.113.9"})  # a lie
    assert response.status_code == 200 and response.headers["X-Request-ID"] == request_id
    [line] = tiers.request_lines("front", request_id, 1)
    assert line["client"] == "127.0.0.1"  # the edge's word, not the client's
    assert len(tiers.request_lines("pool-small", request_id, 3)) == 3
    [edge] = tiers.request_lines("edge", request_id, 1)
    assert (edge["status"], edge["path"], edge["client"]) == (200, "/autocomplete",
                                                              "127.0.0.1")


def test_past_its_rate_a_client_gets_429_with_retry_after(
        tmp_path: Path, tiny_model_dir: Path) -> None:
    # One request a minute, no burst: a second one at once is past the rate.
    limited = start(tmp_path, tiny_model_dir, {"requests_per_second": 1 / 60, "burst": 0})
    try:
        answers = [requests.get(f"{limited.front_url}/v1/models", timeout=10)
                   for _ in range(2)]
        refused = answers[-1]
        assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
        assert "limit" in refused.json()["error"]["message"]  # OpenAI's shape under /v1/
        plain = requests.get(f"{limited.front_url}/health", timeout=10)
        assert plain.status_code == 429 and "limit" in plain.json()["description"]
    finally:
        limited.stop()


def test_with_several_keys_one_key_past_its_share_gets_429_and_the_others_are_served(
        tmp_path: Path, tiny_model_dir: Path) -> None:
    # Three paced workers and 3 queued samples, shared by two keys: 3 samples each. No
    # sample ends before the test opens the gates, so "holds" is exact.
    gates = Gates(tmp_path / "gates")
    document = layout_document(
        tiny_model_dir, pools={"small": {"bind": f"127.0.0.1:{free_port()}",
                                         "worker_timeout": 120, "slots": ["cpu"] * 3}},
        front={"bind": f"127.0.0.1:{free_port()}", "max_queued_samples": 3},
        generation={"defaults": {"max_time": 60.0}, "limits": {"max_time": 60.0}})
    path = tmp_path / "gpu_layout.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    running = RunningTiers(path, tmp_path, env={**gates.env, API_KEYS_ENV: "key-a,key-b"},
                           apps={"pool-small": PACED_APP})

    def tab(key: str, n: int) -> requests.Response:
        return requests.post(f"{running.front_url}/autocomplete", timeout=90,
                             json={"context": "Share", "n_samples": n},
                             headers={"Authorization": f"Bearer {key}"})

    try:
        running.wait_ready()
        with ThreadPoolExecutor(2) as executor:
            held = executor.submit(tab, "key-a", 3)
            running.wait_inflight(1)  # key A holds its whole share
            refused = tab("key-a", 1)
            other = executor.submit(tab, "key-b", 3)
            running.wait_inflight(2)  # key B is served beside it
            for step in range(len(PIECES) + 1):
                gates.open(step)
            answers = [held.result(), other.result()]
    finally:
        running.stop()
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
    assert "share of 3" in refused.json()["description"]
    assert [a.status_code for a in answers] == [200, 200]
