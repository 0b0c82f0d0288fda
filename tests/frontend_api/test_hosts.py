"""Which of a pool's hosts takes the next sample."""

from __future__ import annotations

import socket

from prometheus_client import REGISTRY

from fanout.tools.ports import free_port
from frontend_api.hosts import HostSet, HostWatcher

URLS = ("http://10.0.0.1:8101", "http://10.0.0.2:8101", "http://10.0.0.3:8101")


def gauge(pool: str, url: str) -> float | None:
    return REGISTRY.get_sample_value("fanout_front_host_up", {"pool": pool, "host": url})


def sent(pool: str, url: str) -> float | None:
    return REGISTRY.get_sample_value("fanout_front_host_samples_total",
                                     {"pool": pool, "host": url})


def test_the_host_with_fewest_outstanding_samples_goes_first() -> None:
    hosts = HostSet("choose", URLS)
    first = hosts.choose(set())
    assert first is not None
    with hosts.sending(first):
        second = hosts.choose(set())
        assert second is not None and second is not first
        with hosts.sending(second):
            third = hosts.choose(set())
            assert third is not None and {first.url, second.url, third.url} == set(URLS)
    assert [h.outstanding for h in hosts.hosts] == [0, 0, 0]
    # Every sample sent is counted against its host, for /metrics; one chosen is not yet.
    assert [sent("choose", h.url) for h in (first, second, third)] == [1.0, 1.0, None]


def test_equally_loaded_hosts_take_turns() -> None:
    hosts = HostSet("turns", URLS)
    picked = [hosts.choose(set()) for _ in range(6)]
    assert [h.url for h in picked if h] == list(URLS) * 2


def test_hosts_out_of_service_go_last_and_tried_ones_never() -> None:
    hosts = HostSet("out", URLS)
    lost = hosts.hosts[0]
    hosts.take_out(lost, "refused the connection")
    assert gauge("out", lost.url) == 0 and lost.out_reason == "refused the connection"
    assert {hosts.choose(set()).url for _ in range(4)} == set(URLS[1:])  # type: ignore[union-attr]
    # Still tried when every host in service has been: a lone pool's host that returns
    # is found by the next request, not only by the watcher.
    assert hosts.choose(set(URLS[1:])) is lost
    assert hosts.choose(set(URLS)) is None
    hosts.bring_back(lost)
    assert lost.in_service and gauge("out", lost.url) == 1 and not hosts.out_of_service()


def test_the_watcher_takes_out_a_host_that_stops_listening_but_not_a_busy_one() -> None:
    # A server whose workers are all busy: it listens, and accepts no one (backlog only).
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(8)
    busy_url = f"http://127.0.0.1:{busy.getsockname()[1]}"
    gone_url = f"http://127.0.0.1:{free_port()}"
    hosts = HostSet("watched", (busy_url, gone_url))
    watcher = HostWatcher({"watched": hosts}, interval=0.05)
    try:
        assert watcher.wait_rounds(1, timeout=60)
        assert not hosts.hosts[1].in_service, "the closed host stayed in service"
        assert watcher.wait_rounds(watcher.rounds + 3, timeout=60)  # and a few more checks
        assert hosts.hosts[0].in_service
        assert hosts.hosts[1].out_reason == "refused the connection"
    finally:
        watcher.stop()
        busy.close()
