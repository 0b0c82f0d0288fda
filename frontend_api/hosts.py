"""The worker-tier servers ("hosts") of each pool, and which one takes the next sample.

A pool may run its worker tier on several machines (the layout's ``pools.NAME.hosts``).
Each sample goes to the host in service with the fewest samples outstanding, so a
request's samples spread over the hosts and a slower host gets less. A host that
refuses or cannot be reached goes out of service at once, whether a sample or the
watcher finds it; every ``front.host_check_seconds`` the watcher checks each host.

The check differs by state. A host in service only has to accept a TCP connection: its
sync workers answer ``/health`` only between generations, so an HTTP probe of a busy
host would time out and take a healthy host out exactly when it is needed, while the
kernel accepts connections into the listen backlog however busy the workers are. A
host out of service comes back once ``GET /health`` answers 200: a worker is ready.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

from frontend_api.metrics import HOST_SAMPLES, HOST_UP
from frontend_api.transport import (
    HEALTH_TIMEOUT,
    connection_failure,
    probe_health,
    worker_session,
)

log = logging.getLogger(__name__)


@dataclass
class Host:
    """One worker-tier server of a pool, as the front sees it (guarded by its HostSet)."""

    url: str
    outstanding: int = 0
    in_service: bool = True
    out_reason: str = ""  # why it went out of service


class HostSet:
    """A pool's hosts: which one takes the next sample, and which are out of service."""

    def __init__(self, pool: str, urls: Iterable[str]) -> None:
        self.pool = pool
        self.hosts = [Host(url) for url in urls]
        self.lock = threading.Lock()
        self.turn = 0  # rotates the choice among hosts equally loaded
        for host in self.hosts:
            HOST_UP.labels(pool, host.url).set(1)

    def choose(self, tried: set[str]) -> Host | None:
        """The untried host with the fewest samples outstanding, those in service first.

        Hosts out of service are still tried when no other is left: the first sample
        after a pool's only host returns then finds it without waiting for the watcher.
        """
        with self.lock:
            left = [(i, h) for i, h in enumerate(self.hosts) if h.url not in tried]
            if not left:
                return None
            count = len(self.hosts)
            _, host = min(left, key=lambda item: (not item[1].in_service,
                                                  item[1].outstanding,
                                                  (item[0] - self.turn) % count))
            self.turn += 1
            return host

    @contextmanager
    def sending(self, host: Host) -> Iterator[None]:
        """Count one sample outstanding on ``host`` while it is out."""
        HOST_SAMPLES.labels(self.pool, host.url).inc()
        with self.lock:
            host.outstanding += 1
        try:
            yield
        finally:
            with self.lock:
                host.outstanding -= 1

    def take_out(self, host: Host, reason: str) -> None:
        with self.lock:
            was_in = host.in_service
            host.in_service, host.out_reason = False, reason
        if was_in:
            log.warning("pool %s: host %s out of service: %s", self.pool, host.url, reason)
            HOST_UP.labels(self.pool, host.url).set(0)

    def bring_back(self, host: Host) -> None:
        with self.lock:
            was_out = not host.in_service
            host.in_service, host.out_reason = True, ""
        if was_out:
            log.warning("pool %s: host %s back in service", self.pool, host.url)
            HOST_UP.labels(self.pool, host.url).set(1)

    def out_of_service(self) -> list[Host]:
        with self.lock:
            return [host for host in self.hosts if not host.in_service]

    def in_service(self) -> list[Host]:
        with self.lock:
            return [host for host in self.hosts if host.in_service]


class HostWatcher:
    """A thread that takes out hosts that stop accepting connections and brings back
    hosts out of service once their /health answers 200."""

    def __init__(self, host_sets: Mapping[str, HostSet], interval: float) -> None:
        self.host_sets, self.interval = host_sets, interval
        self.session = worker_session()
        self.stopping = threading.Event()
        self.rounds = 0  # checks done, for whoever must know one happened (the tests)
        self._checked = threading.Condition()
        self.thread = threading.Thread(target=self._run, name="host-watcher", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.wait(self.interval):
            self.check()
            with self._checked:
                self.rounds += 1
                self._checked.notify_all()

    def check(self) -> None:
        """One round: every host in service, then every host out of it."""
        for host_set in self.host_sets.values():
            for host in host_set.in_service():
                if self.stopping.is_set():
                    return
                if (failure := connection_failure(host.url)) is not None:
                    host_set.take_out(host, failure)
            for host in host_set.out_of_service():
                if self.stopping.is_set():
                    return
                if self.ready(host.url):
                    host_set.bring_back(host)

    def wait_rounds(self, count: int, timeout: float) -> bool:
        """Until ``count`` rounds are done since start; False if ``timeout`` came first."""
        with self._checked:
            return self._checked.wait_for(lambda: self.rounds >= count, timeout)

    def ready(self, url: str) -> bool:
        """Whether the host's /health says at least one of its workers is ready."""
        health = probe_health(self.session, url)
        return health is not None and health.status == 200

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=HEALTH_TIMEOUT + 1)
        self.session.close()

