"""A closed-loop load of simulated editor users against the front API.

Each of U user threads sends ``POST {front}/autocomplete``, waits for the answer, thinks,
and sends again, until the deadline (or the request budget) runs out. Closed loop: a slow
server slows its users down, as real editors are, instead of piling up an open-loop queue.
Every request sent gets exactly one :class:`Record`, whatever happens to it, so the
figures account for all of them. Used by the capacity tool; reusable by a soak test.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import requests

NO_ANSWER = 0  # the status of a request that got no HTTP answer (refused, reset, timed out)


@dataclass(frozen=True)
class Record:
    user: int
    started: float  # seconds after the load began
    latency: float  # seconds until the whole answer was read
    status: int  # HTTP status, or NO_ANSWER
    sentences: int  # completions in the answer
    error: str = ""  # why it failed, for a status alone does not say (timeout, bad body)
    partial: bool = False  # a 200 missing samples that failed by the deadline
    retry_after: float = 0.0  # what a 503 asked the user to wait

    @property
    def ok(self) -> bool:
        return self.status == 200 and not self.error


@dataclass(frozen=True)
class LoadResult:
    users: int
    think: float
    duration: float  # from the first request sent to the last answer read
    records: tuple[Record, ...]

    @property
    def requests(self) -> int:
        return len(self.records)

    @property
    def ok_requests(self) -> int:
        return sum(r.ok for r in self.records)

    @property
    def completions(self) -> int:
        return sum(r.sentences for r in self.records if r.ok)

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.duration if self.duration > 0 else 0.0

    @property
    def completions_per_second(self) -> float:
        return self.completions / self.duration if self.duration > 0 else 0.0

    @property
    def errors(self) -> int:
        return self.requests - self.ok_requests

    @property
    def partial_answers(self) -> int:
        return sum(r.ok and r.partial for r in self.records)

    @property
    def by_status(self) -> dict[int, int]:
        """Every request by its status (NO_ANSWER for none): they add up to ``requests``."""
        return dict(sorted(Counter(r.status for r in self.records).items()))

    @property
    def errors_by_status(self) -> dict[int, int]:
        return dict(sorted(Counter(r.status for r in self.records if not r.ok).items()))

    def latency(self, percent: float) -> float | None:
        """Latency percentile of the successful requests (None if there were none)."""
        return percentile([r.latency for r in self.records if r.ok], percent)

    def summary(self) -> dict[str, Any]:
        return {"users": self.users, "think_s": self.think, "duration_s": self.duration,
                "requests": self.requests, "ok_requests": self.ok_requests,
                "completions": self.completions,
                "requests_per_s": self.requests_per_second,
                "completions_per_s": self.completions_per_second,
                "p50_s": self.latency(50), "p95_s": self.latency(95), "p99_s": self.latency(99),
                "errors": self.errors,
                "errors_by_status": {str(k): v for k, v in self.errors_by_status.items()}}


def percentile(values: Sequence[float], percent: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default), so p50 <= p95 <= p99."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * percent / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def run_load(url: str, body: Mapping[str, Any] | Sequence[Mapping[str, Any]], users: int,
             duration: float, think: float = 0.0, timeout: float = 60.0,
             max_requests: int | None = None,
             on_record: Callable[[Record], None] | None = None) -> LoadResult:
    """Drive ``users`` closed-loop users at ``{url}/autocomplete`` for ``duration`` seconds.
    Every user sends ``body``, or, given a list of bodies, user i sends the i-th (cycled).

    No request starts after the deadline; those in flight are waited for (each at most
    ``timeout``), so the run ends within ``duration + timeout``. ``on_record`` is called
    for every record, one at a time (the capacity tool moves its progress bar with it).
    """
    bodies = [dict(body)] if isinstance(body, Mapping) else [dict(b) for b in body]
    load = _Load(f"{url.rstrip('/')}/autocomplete", bodies, think, timeout,
                 max_requests, on_record)
    threads = [threading.Thread(target=load.user, args=(user, users), daemon=True,
                                name=f"load-user-{user}") for user in range(users)]
    load.begin(duration)
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join()
    finally:
        load.stop.set()  # on Ctrl-C the users stop at their next think
    return LoadResult(users=users, think=think, duration=load.elapsed(),
                      records=tuple(sorted(load.records, key=lambda r: r.started)))


class _Load:
    """What the user threads share: the clock, the request budget and the records."""

    def __init__(self, endpoint: str, bodies: list[dict[str, Any]], think: float,
                 timeout: float, max_requests: int | None,
                 on_record: Callable[[Record], None] | None) -> None:
        self.endpoint, self.bodies, self.think, self.timeout = endpoint, bodies, think, timeout
        self.budget = max_requests
        self.on_record = on_record
        self.records: list[Record] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.origin = self.deadline = self.last_answer = 0.0

    def begin(self, duration: float) -> None:
        self.origin = self.last_answer = time.monotonic()
        self.deadline = self.origin + duration

    def elapsed(self) -> float:
        return self.last_answer - self.origin

    def take_ticket(self) -> float | None:
        """When the next request may start (now), or None once the run is over. The time is
        the request's start, so that no record starts after the deadline."""
        with self.lock:
            now = time.monotonic()
            if self.stop.is_set() or now >= self.deadline:
                return None
            if self.budget is not None:
                if self.budget <= 0:
                    return None
                self.budget -= 1
            return now

    def user(self, user: int, users: int) -> None:
        # Stagger the first requests over one think time, so users do not march in step.
        if self.stop.wait(self.think * user / users):
            return
        with requests.Session() as session:
            session.trust_env = False  # the front is ours: no proxy or .netrc look-ups
            while (ticket := self.take_ticket()) is not None:
                record = self.send(session, user, ticket)
                self.add(record)
                # A polite editor waits as long as a 503 asks before it tries again.
                pause = min(max(self.think, record.retry_after),
                            self.deadline - time.monotonic())
                if pause > 0 and self.stop.wait(pause):
                    return

    def send(self, session: requests.Session, user: int, started: float) -> Record:
        status, sentences, error, partial, retry_after = NO_ANSWER, 0, "", False, 0.0
        try:
            response = session.post(self.endpoint, json=self.bodies[user % len(self.bodies)],
                                    timeout=self.timeout)
            status = response.status_code
            if status == 200:
                body = response.json()
                sentences, partial = len(body["sentences"]), bool(body.get("partial"))
            retry_after = _seconds(response.headers.get("Retry-After"))
        except requests.RequestException as exc:  # includes a body that is not JSON
            error = type(exc).__name__
        except (KeyError, TypeError, ValueError) as exc:
            error = f"answer without sentences ({exc!r})"
        return Record(user=user, started=started - self.origin,
                      latency=time.monotonic() - started, status=status,
                      sentences=sentences if not error else 0, error=error,
                      partial=partial, retry_after=retry_after)

    def add(self, record: Record) -> None:
        with self.lock:
            self.records.append(record)
            self.last_answer = max(self.last_answer, self.origin + record.started
                                   + record.latency)
            if self.on_record is not None:
                self.on_record(record)


def _seconds(header: str | None) -> float:
    """A Retry-After in seconds (the HTTP-date form is not one the front sends)."""
    try:
        return max(0.0, float(header)) if header else 0.0
    except ValueError:
        return 0.0
