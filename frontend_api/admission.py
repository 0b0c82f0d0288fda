"""Bound the work the front accepts: past a bound, 503 with Retry-After at once.

Two bounds, both from the layout's ``front`` section: requests in flight (below the
front's threads, so threads stay free to refuse and to answer /health), and per pool
the samples that would wait for a busy worker. Queueing past them would only turn
overload into time-outs for everyone; a prompt 503 lets clients back off and retry.

With several API keys, each key also has a fair share of every pool: its workers plus
its queue (``max_queued_samples``), divided by the number of keys. A key past its share
gets 429 with Retry-After, its own limit, while the other keys are still served.
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
    def __init__(self, front: Front, pools: Mapping[str, Pool], api_keys: int = 0) -> None:
        """``api_keys``: how many keys share the pools (0 or 1: no per-key share)."""
        self.max_inflight = front.max_inflight
        self.max_queued = front.max_queued_samples
        self.workers = {name: pool.total_workers for name, pool in pools.items()}
        self.api_keys = api_keys
        self.lock = threading.Lock()
        self.inflight = 0
        self.samples = dict.fromkeys(pools, 0)
        self.by_key: dict[tuple[str, int], int] = {}
        self.rejected = 0

    def key_share(self, pool: str) -> int:
        """The samples one key may hold on ``pool`` at once, when several keys share it."""
        return max(1, -(-(self.workers[pool] + self.max_queued) // max(1, self.api_keys)))

    @contextmanager
    def admit(self, pool: str, samples: int, key: int | None = None) -> Iterator[None]:
        """Hold a place for one request of ``samples`` samples sent with API key number
        ``key`` (None without keys), or raise a 429 (the key's share) or a 503."""
        note(pool=pool, n_samples=samples)  # on the request's log line, refused or not
        held = (pool, key) if key is not None and self.api_keys > 1 else None
        with self.lock:
            if held is not None:
                self._check_share(pool, samples, self.by_key.get(held, 0))
            self._check(pool, samples)
            self.inflight += 1
            self.samples[pool] += samples
            if held is not None:
                self.by_key[held] = self.by_key.get(held, 0) + samples
        try:
            yield
        finally:
            with self.lock:
                self.inflight -= 1
                self.samples[pool] -= samples
                if held is not None:
                    self.by_key[held] -= samples
                    if not self.by_key[held]:
                        del self.by_key[held]

    def _check_share(self, pool: str, samples: int, holding: int) -> None:
        share = self.key_share(pool)
        # Like the pool's own bound: a key holding nothing may always send one request.
        if holding and holding + samples > share:
            self.rejected += 1
            REJECTIONS.labels(pool, "key_share").inc()
            raise falcon.HTTPTooManyRequests(
                title="Past this API key's share", description=(
                    f"this API key holds {holding} samples on pool {pool!r}; {samples} more "
                    f"would pass its share of {share} (the pool's {self.workers[pool]} "
                    f"workers and {self.max_queued} queued samples, shared by "
                    f"{self.api_keys} keys); retry in {OVERLOAD_RETRY_AFTER}s"),
                retry_after=OVERLOAD_RETRY_AFTER)

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
