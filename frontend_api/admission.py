"""Bound the work the front accepts: past a bound, 503 with Retry-After at once.

Two bounds, both from the layout's ``front`` section: requests in flight (below the
front's threads, so threads stay free to refuse and to answer /health), and per pool
the samples that would wait for a busy worker. Queueing past them would only turn
overload into time-outs for everyone; a prompt 503 lets clients back off and retry.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import falcon

from fanout.layout import Front, Pool
from fanout.observe import note
from frontend_api.metrics import REJECTIONS

# Seconds a refused client should wait: about one generation of the default length.
OVERLOAD_RETRY_AFTER = 1


class Admission:
    def __init__(self, front: Front, pools: Mapping[str, Pool]) -> None:
        self.max_inflight = front.max_inflight
        self.max_queued = front.max_queued_samples
        self.workers = {name: pool.total_workers for name, pool in pools.items()}
        self.lock = threading.Lock()
        self.inflight = 0
        self.samples = dict.fromkeys(pools, 0)
        self.rejected = 0

    @contextmanager
    def admit(self, pool: str, samples: int) -> Iterator[None]:
        """Hold a place for one request of ``samples`` samples, or raise a 503."""
        note(pool=pool, n_samples=samples)  # on the request's log line, refused or not
        with self.lock:
            self._check(pool, samples)
            self.inflight += 1
            self.samples[pool] += samples
        try:
            yield
        finally:
            with self.lock:
                self.inflight -= 1
                self.samples[pool] -= samples

    def _check(self, pool: str, samples: int) -> None:
        if self.inflight >= self.max_inflight:
            self._reject(pool, "inflight", "the front is serving its limit of "
                         f"{self.max_inflight} requests (front.max_inflight)")
        queued = self.samples[pool] + samples - self.workers[pool]
        # A request alone on its pool always goes through, however many samples it asks.
        if queued > self.max_queued and self.samples[pool] > 0:
            self._reject(pool, "queued", f"pool {pool!r} already has {self.samples[pool]} "
                         f"samples for {self.workers[pool]} workers; {samples} more would "
                         f"queue past its limit of {self.max_queued} "
                         "(front.max_queued_samples)")

    def _reject(self, pool: str, bound: str, why: str) -> None:
        self.rejected += 1
        REJECTIONS.labels(pool, bound).inc()
        raise falcon.HTTPServiceUnavailable(title="Overloaded", description=f"{why}; retry "
                                            f"in {OVERLOAD_RETRY_AFTER}s",
                                            retry_after=OVERLOAD_RETRY_AFTER)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {"inflight": self.inflight, "max_inflight": self.max_inflight,
                    "samples": dict(self.samples), "max_queued_samples": self.max_queued,
                    "rejected": self.rejected}
