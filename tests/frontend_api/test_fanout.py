"""The fan-out client against a small stdlib HTTP server standing in for a worker tier."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from prometheus_client import REGISTRY

from fanout.layout import Bind, Model, Pool, Slot
from fanout.peer import peer_gone
from fanout.protocol import GenerationParams
from fanout.tools.ports import free_port
from frontend_api.errors import ClientGone, WorkerTierError
from frontend_api.fanout import MAX_RESAMPLES, FanoutClient
from frontend_api.samples import AutocompleteRequest

# (status, body) for one /generate request, given its JSON body; DROP closes the
# connection without an answer, as a worker killed mid-generation does; HANG answers
# nothing until the front cuts the connection, as a stalled worker would.
Behaviour = Callable[[dict[str, Any]], tuple[int, Any]]
DROP = -1
HANG = -2
# What a deadline may overrun by on a busy machine: the front's threads must be scheduled.
SCHEDULING = 2.0


def good(body: dict[str, Any]) -> tuple[int, Any]:
    return 200, {"text": body["context"][::-1], "tokens": 3, "finish_reason": "length",
                 "time": 0.01, "seed": body.get("seed", 0),
                 "worker": {"pid": 1, "slot": 0, "device": "cpu"}}


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up (the deadline tests) is expected, not an error


class WorkerTier:
    """A threaded HTTP server whose /generate answers as ``behaviour`` says."""

    def __init__(self, port: int = 0) -> None:
        self.behaviour: Behaviour = good
        self.seen: list[dict[str, Any]] = []
        self.request_ids: list[str | None] = []  # X-Request-ID of each /generate
        self.abandoned = threading.Event()  # a client cut a connection we were serving
        self.closing = threading.Event()  # ends every HANG
        tier = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                tier.seen.append(body)
                tier.request_ids.append(self.headers.get("X-Request-ID"))
                status, answer = tier.behaviour(body)
                while status == HANG and not peer_gone(self.connection):
                    if tier.closing.wait(0.01):
                        break
                if peer_gone(self.connection):
                    tier.abandoned.set()
                if status in (DROP, HANG):
                    self.close_connection = True
                    return
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

        self.server = QuietServer(("127.0.0.1", port or free_port()), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def bind(self) -> Bind:
        return Bind("127.0.0.1", self.server.server_address[1])

    def close(self) -> None:
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()


def pool(bind: Bind, workers: int = 2, hosts: tuple[Bind, ...] = ()) -> Pool:
    return Pool(name="small", model=Model("m", None), dtype="float32", bind=bind,
                slots=tuple(Slot(i, "cpu") for i in range(workers)),
                hosts=tuple(host.url for host in hosts))


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
    gathered = client.complete(request(n=4))
    assert [s.text for s in gathered.samples] == ["cba"] * 4
    assert [s.seed for s in gathered.samples] == [5, 6, 7, 8]
    assert all(s.round_trip >= 0 for s in gathered.samples) and gathered.failed == []


@pytest.mark.parametrize(("behaviour", "status", "words"), [
    (lambda b: (200, {"text": "x"}), 502, "answered without 'time'"),
    (lambda b: (500, b"<html>oops</html>"), 502, "answered 500"),
    (lambda b: (503, {"title": "Loading", "description": "warming up"}), 502, "warming up"),
    (lambda b: (DROP, None), 502, "dropped the connection"),
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
    tier.behaviour = lambda body: (HANG, None)
    started = time.monotonic()
    with pytest.raises(WorkerTierError) as caught:
        client.complete(request(max_time=0.3))
    assert caught.value.status == 504
    assert time.monotonic() - started < 0.3 + 0.5 + SCHEDULING  # max_time + slack


def test_a_dropped_sample_is_sent_again(tier: WorkerTier, client: FanoutClient) -> None:
    drops = {6: 2}  # seed 6's first two workers die mid-generation; the third answers

    def dying(body: dict[str, Any]) -> tuple[int, Any]:
        if drops.get(body["seed"], 0) > 0:
            drops[body["seed"]] -= 1
            return DROP, None
        return good(body)
    tier.behaviour = dying
    gathered = client.complete(request(n=3))
    assert [s.seed for s in gathered.samples] == [5, 6, 7] and gathered.failed == []
    assert [b["seed"] for b in tier.seen].count(6) == 3


def test_a_failing_sample_leaves_the_others_a_partial_answer(
        tier: WorkerTier, client: FanoutClient) -> None:
    def second_fails(body: dict[str, Any]) -> tuple[int, Any]:
        return (500, b"broken") if body["seed"] == 6 else good(body)
    tier.behaviour = second_fails
    gathered = client.complete(request(n=3))
    assert [s.seed for s in gathered.samples] == [5, 7]
    assert [(f.index, f.status) for f in gathered.failed] == [(1, 502)]
    assert "answered 500" in gathered.failed[0].reason


def test_a_hung_sample_costs_only_itself(tier: WorkerTier, client: FanoutClient) -> None:
    tier.behaviour = lambda body: (HANG, None) if body["seed"] == 7 else good(body)
    started = time.monotonic()
    gathered = client.complete(request(n=3, max_time=0.3))
    assert time.monotonic() - started < 0.3 + 0.5 + SCHEDULING  # max_time + slack
    assert [s.seed for s in gathered.samples] == [5, 6]
    assert [(f.index, f.status) for f in gathered.failed] == [(2, 504)]
    # Its connection was cut, which is what tells a real worker to stop generating.
    assert tier.abandoned.wait(60)


def test_a_pool_that_refuses_connections_is_down_at_once() -> None:
    client = FanoutClient({"small": pool(Bind("127.0.0.1", free_port()))}, threads=4,
                          network_slack=5.0)
    started = time.monotonic()
    try:
        with pytest.raises(WorkerTierError) as caught:
            client.complete(request(max_time=10.0))
    finally:
        client.close()
    assert time.monotonic() - started < 1.0  # no waiting for the 15 s deadline
    assert caught.value.status == 503 and caught.value.retry_after
    assert "is down" in caught.value.description


def test_a_client_that_leaves_stops_the_fanout(tier: WorkerTier, client: FanoutClient) -> None:
    tier.behaviour = lambda body: (HANG, None)
    # The client leaves once its three samples are out; they would hang to the deadline
    # (a 504) had the fan-out not stopped.
    with pytest.raises(ClientGone):
        client.complete(request(max_time=5.0), client_gone=lambda: len(tier.seen) == 3)
    assert tier.abandoned.wait(60)


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
        assert [s.text for s in client.complete(request(n=2)).samples] == ["cba", "cba"]
    finally:
        client.close()


def all_out(count: int) -> Behaviour:
    """Answers once ``count`` samples have arrived (on all the tiers that share it): so a
    request's samples are all out at once, however the front's threads are scheduled."""
    arrived = threading.Barrier(count)

    def behaviour(body: dict[str, Any]) -> tuple[int, Any]:
        arrived.wait(timeout=60)
        return good(body)
    return behaviour


@pytest.fixture
def second_tier() -> Iterator[WorkerTier]:
    running = WorkerTier()
    yield running
    running.close()


def test_samples_spread_over_a_pools_hosts(tier: WorkerTier, second_tier: WorkerTier) -> None:
    tier.behaviour = second_tier.behaviour = all_out(4)
    client = FanoutClient({"small": pool(tier.bind, hosts=(tier.bind, second_tier.bind))},
                          threads=8, network_slack=1.0)
    try:
        gathered = client.complete(request(n=4))
    finally:
        client.close()
    hosts = [sample.worker["host"] for sample in gathered.samples]
    # Fewest outstanding first: with all four out at once, two on each host.
    assert sorted(hosts) == sorted([tier.bind.url] * 2 + [second_tier.bind.url] * 2)
    assert len(tier.seen) == len(second_tier.seen) == 2


def test_a_host_that_refuses_is_skipped_and_comes_back(tier: WorkerTier) -> None:
    gone = Bind("127.0.0.1", free_port())
    client = FanoutClient({"small": pool(tier.bind, hosts=(gone, tier.bind))}, threads=8,
                          network_slack=1.0, host_check_seconds=0.1)
    returned: WorkerTier | None = None
    try:
        gathered = client.complete(request(n=3))
        # Every sample arrived, from the host that is up; the other is out of service.
        assert not gathered.failed
        assert {s.worker["host"] for s in gathered.samples} == {tier.bind.url}
        assert [h.in_service for h in client.hosts["small"].hosts] == [False, True]
        health = client.health()["small"]
        assert (health["status"], health["ready_workers"], health["workers"]) == \
            ("degraded", 2, 4)
        assert [(h["url"], h["in_service"]) for h in health["hosts"]] == [
            (gone.url, False), (tier.bind.url, True)]
        seen_before = len(tier.seen)
        client.complete(request(n=2))
        assert len(tier.seen) == seen_before + 2  # no more tries on the lost host
        returned = WorkerTier(port=gone.port)  # the host is back: the watcher finds it
        # Two rounds from now: one whole round has begun since the host came back.
        assert client.watcher.wait_rounds(client.watcher.rounds + 2, timeout=60)
        assert client.hosts["small"].hosts[0].in_service, "the returned host stayed out"
        returned.behaviour = tier.behaviour = all_out(4)
        gathered = client.complete(request(n=4))
        assert {s.worker["host"] for s in gathered.samples} == {gone.url, tier.bind.url}
    finally:
        client.close()
        if returned is not None:
            returned.close()


def test_a_pool_none_of_whose_hosts_answer_is_down() -> None:
    gone = (Bind("127.0.0.1", free_port()), Bind("127.0.0.1", free_port()))
    client = FanoutClient({"small": pool(gone[0], hosts=gone)}, threads=4, network_slack=5.0)
    try:
        with pytest.raises(WorkerTierError) as caught:
            client.complete(request(max_time=10.0))
    finally:
        client.close()
    assert caught.value.status == 503 and caught.value.retry_after
    assert "none of its 2 hosts could be reached" in caught.value.description
    assert f"{gone[1].url} refused the connection" in caught.value.description


def by_seed(texts: dict[int | None, str], default: str = "other") -> Behaviour:
    """Answers each seed with its text (others with ``default``)."""
    def behaviour(body: dict[str, Any]) -> tuple[int, Any]:
        status, answer = good(body)
        return status, {**answer, "text": texts.get(body.get("seed"), default)}
    return behaviour


def distinct(n: int = 3, seed: int | None = 5, exclude: tuple[str, ...] = (),
             max_time: float = 1.0) -> AutocompleteRequest:
    return replace(request(n=n, seed=seed, max_time=max_time), distinct=True, exclude=exclude)


def test_repeats_and_empty_samples_are_sent_again_with_the_next_seeds(
        tier: WorkerTier, client: FanoutClient) -> None:
    # 5 and 6 say the same (6 with other spacing), 7 says nothing: 8 and 9 replace them.
    tier.behaviour = by_seed({5: "the same", 6: " the  same\n", 7: " ", 8: "new", 9: "newer"})
    counted = REGISTRY.get_sample_value("fanout_front_sample_resamples_total",
                                        {"pool": "small"}) or 0
    gathered = client.complete(distinct())
    assert REGISTRY.get_sample_value("fanout_front_sample_resamples_total",
                                     {"pool": "small"}) == counted + 2
    # Whichever of 5 and 6 came first stands.
    assert sorted(s.text.strip() for s in gathered.samples) == ["new", "newer", "the  same"] \
        or sorted(s.text for s in gathered.samples) == ["new", "newer", "the same"]
    assert gathered.resampled == 2 and gathered.failed == []
    assert sorted(body["seed"] for body in tier.seen) == [5, 6, 7, 8, 9]
    # Without distinct, the repeats stand and nothing is sent again.
    tier.seen.clear()
    plain = client.complete(request(n=3))
    assert plain.resampled == 0 and len(tier.seen) == 3


def test_excluded_texts_count_as_repeats(tier: WorkerTier, client: FanoutClient) -> None:
    tier.behaviour = by_seed({5: "shown before", 6: "fresh", 7: "fresh  ", 8: "a", 9: "b"})
    gathered = client.complete(distinct(exclude=("shown  before ",)))
    # Whichever of 6 and 7 came first stands.
    assert sorted(s.text.strip() for s in gathered.samples) == ["a", "b", "fresh"]
    assert gathered.resampled == 2


def test_a_sample_that_keeps_repeating_stands_after_its_tries(
        tier: WorkerTier, client: FanoutClient) -> None:
    tier.behaviour = by_seed({}, default="always")
    gathered = client.complete(distinct(n=2))
    assert [s.text for s in gathered.samples] == ["always", "always"]
    assert gathered.resampled == MAX_RESAMPLES and len(tier.seen) == 2 + MAX_RESAMPLES
    # Seeds go on from seed + n: 5, 6, then 7 and 8 for the repeat.
    assert sorted(body["seed"] for body in tier.seen) == [5, 6, 7, 8]


def test_unseeded_repeats_are_sent_again_unseeded(tier: WorkerTier,
                                                  client: FanoutClient) -> None:
    tier.behaviour = by_seed({}, default="")
    gathered = client.complete(distinct(n=1, seed=None))
    assert gathered.resampled == MAX_RESAMPLES and "seed" not in tier.seen[-1]


def test_greedy_repeats_are_not_sent_again(tier: WorkerTier, client: FanoutClient) -> None:
    tier.behaviour = by_seed({}, default="same")
    greedy = distinct()
    greedy = replace(greedy, params=replace(greedy.params, temperature=0.0))
    assert client.complete(greedy).resampled == 0 and len(tier.seen) == 3


def test_a_repeat_is_not_sent_again_past_the_deadline(tier: WorkerTier,
                                                      client: FanoutClient) -> None:
    def slow_repeats(body: dict[str, Any]) -> tuple[int, Any]:
        if body["seed"] >= 7:  # the second tries hang: the repeat stands at the deadline
            return HANG, None
        return good(body)
    tier.behaviour = slow_repeats
    started = time.monotonic()
    gathered = client.complete(distinct(n=2, max_time=0.3))
    assert time.monotonic() - started < 0.3 + 0.5 + SCHEDULING
    assert [s.text for s in gathered.samples] == ["cba", "cba"] and gathered.failed == []
    assert gathered.resampled == 1 and tier.abandoned.wait(5)


def test_batches_compare_samples_of_the_same_prompt(tier: WorkerTier,
                                                    client: FanoutClient) -> None:
    tier.behaviour = by_seed({}, default="same")  # each prompt's first sample stands
    batch = distinct(n=4)
    batch = replace(batch, prompts=(batch.params, replace(batch.params, context="xyz")))
    gathered = client.complete(batch)
    assert gathered.resampled == 2 * MAX_RESAMPLES  # one repeat per prompt, tried twice
    # Each prompt's repeat goes on from seed + 2 (its samples had 5 and 6).
    assert sorted(body["seed"] for body in tier.seen) == [5, 5, 6, 6, 7, 7, 8, 8]
