"""/metrics and the request log on real tiers: the counts add up across processes.

The pool's three gunicorn workers each count what they serve; the sums a scrape of any
one of them returns must match what the front and its clients saw.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from typing import Any

import pytest
import requests

from tests.integration.servers import READY_SECONDS, RunningTiers, scrape, total

pytestmark = pytest.mark.integration

def autocomplete(tiers: RunningTiers, body: dict[str, Any],
                 headers: dict[str, str] | None = None) -> requests.Response:
    response = requests.post(f"{tiers.front_url}/autocomplete", json=body, headers=headers,
                             timeout=30)
    assert response.status_code == 200, response.text
    return response


def test_the_counts_add_up_across_the_front_and_every_worker(tiers: RunningTiers) -> None:
    pool_url = tiers.pool_url("small")
    front_before, pool_before = scrape(tiers.front_url), scrape(pool_url)

    # stop_at none: every sample is exactly its length (no word finished or cut back).
    sent = [autocomplete(tiers, {"context": "Counting", "n_samples": 3, "length": 4 + i,
                                 "stop_at": "none"})
            for i in range(4)]

    front_after, pool_after = scrape(tiers.front_url), scrape(pool_url)

    def front(name: str, **labels: str) -> float:
        return total(front_after, name, **labels) - total(front_before, name, **labels)

    def pool(name: str, **labels: str) -> float:
        return total(pool_after, name, **labels) - total(pool_before, name, **labels)

    ok = {"route": "/autocomplete", "method": "POST", "status": "200"}
    assert front("fanout_front_requests_total", **ok) == len(sent)
    assert front("fanout_front_request_duration_seconds_count", route="/autocomplete") == 4
    assert front("fanout_front_samples_per_request_sum", pool="small") == 3 * len(sent)
    assert front("fanout_front_sample_failures_total") == 0
    # Every worker counted its own share, and a scrape of any one of them sums all three.
    generated = {"route": "/generate", "method": "POST", "status": "200"}
    assert pool("fanout_worker_requests_total", **generated) == 3 * len(sent)
    assert {slot for slot in "012"
            if pool("fanout_worker_requests_total", slot=slot, **generated) > 0} == {*"012"}
    assert pool("fanout_worker_generation_seconds_count") == 3 * len(sent)
    tokens = sum(s["tokens"] for r in sent for s in r.json()["sentences"])
    assert tokens == 3 * sum(4 + i for i in range(4))
    assert pool("fanout_worker_generated_tokens_total") == tokens
    # One memory and one load-time series per live worker; the front has its process_*.
    assert len(pool_after["fanout_worker_model_load_seconds"]) == 3
    assert {s.labels["kind"] for s in pool_after["fanout_worker_memory_bytes"]} == {"rss"}
    assert total(front_after, "process_resident_memory_bytes") > 0


def test_a_request_id_is_answered_and_logged_by_both_tiers(tiers: RunningTiers) -> None:
    request_id = f"it-{uuid.uuid4().hex[:12]}"
    response = autocomplete(tiers, {"context": "Tracing", "n_samples": 3, "length": 6},
                            headers={"X-Request-ID": request_id})

    assert response.headers["X-Request-ID"] == request_id
    [front] = tiers.request_lines("front", request_id, 1)
    assert (front["route"], front["method"], front["status"]) == ("/autocomplete", "POST", 200)
    assert (front["pool"], front["n_samples"], front["partial"]) == ("small", 3, False)
    assert front["duration_ms"] > 0 and front["logger"] == "fanout.requests"
    workers = tiers.request_lines("pool-small", request_id, 3)
    assert len(workers) == 3
    assert {(w["route"], w["status"], w["finish_reason"]) for w in workers} == {
        ("/generate", 200, "length")}
    assert sorted(w["slot"] for w in workers) == [0, 1, 2]
    assert sum(w["tokens"] for w in workers) == sum(
        s["tokens"] for s in response.json()["sentences"])


def test_a_malformed_request_id_is_replaced_on_both_tiers(tiers: RunningTiers) -> None:
    response = autocomplete(tiers, {"context": "x", "n_samples": 2, "length": 2},
                            headers={"X-Request-ID": "no spaces allowed"})
    request_id = response.headers["X-Request-ID"]
    assert request_id != "no spaces allowed" and len(request_id) == 32
    assert len(tiers.request_lines("front", request_id, 1)) == 1
    assert len(tiers.request_lines("pool-small", request_id, 2)) == 2


def test_a_killed_worker_counts_a_restart_and_keeps_its_counts(tiers: RunningTiers) -> None:
    pool_url = tiers.pool_url("small")
    autocomplete(tiers, {"context": "before", "n_samples": 3, "length": 3})
    before = scrape(pool_url)
    victim = tiers.ready_slots("small")["1"]

    os.kill(victim, signal.SIGKILL)

    deadline = time.monotonic() + READY_SECONDS
    while (now := tiers.ready_slots("small")).get("1") in (None, victim):
        assert time.monotonic() < deadline, tiers.log_tail()
        time.sleep(0.2)
    after = scrape(pool_url)
    restarts = {slot: total(after, "fanout_worker_restarts_total", slot=slot)
                - total(before, "fanout_worker_restarts_total", slot=slot) for slot in "012"}
    assert restarts == {"0": 0, "1": 1, "2": 0}
    # What the dead worker counted stays in the sums; its live gauges went with it.
    for name, labels in (("fanout_worker_generated_tokens_total", {}),
                         ("fanout_worker_requests_total", {"route": "/generate"})):
        assert total(after, name, **labels) == total(before, name, **labels) > 0
    pids = {s.labels["pid"] for s in after["fanout_worker_memory_bytes"]}
    assert pids == {str(pid) for pid in now.values()} and str(victim) not in pids
