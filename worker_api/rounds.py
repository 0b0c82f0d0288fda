"""Rounds: the requests a worker took from its listener at once, sampled as one batch.

A worker takes one connection when it is idle, as gunicorn's sync worker does; but when
other connections are already waiting in the listener's backlog, more than the pool's
other idle workers can take, it takes the rest too, up to the pool's ``batch``
(``worker_api.gathering``), and serves them side by side, one thread each: a round. A
round's samples that can share a decoding wait for one another and are decoded as one
batch: decoding a batch of three costs the small model little more than half of three
decodings one after another, since every step reads the whole output projection whatever
the batch (docs/BENCHMARKS.md, 2026-12-05 evening).

The barrier counts requests, not time: a batch runs as soon as every request of the
round has either asked to sample (``gather``) or said it will not (``leave``: it
finished, failed, streams, or samples some other way). No request waits on a clock, and
none waits for another that is not going to join.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

_local = threading.local()


@dataclass
class _Entry(Generic[Item]):
    key: Hashable
    item: Item
    run: Callable[[list[Item]], None]
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    rows: int = 1  # the items of its group


class Round:
    """``size`` requests served side by side, each on its own thread with its own seat."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._settled = 0  # seats that gathered or left
        self._waiting: list[_Entry[object]] = []

    def seat(self) -> Seat:
        return Seat(self)

    def _settle(self, entry: _Entry[object] | None) -> list[_Entry[object]] | None:
        """Count one more seat settled (lock held); the entries to run if it was the last."""
        if entry is not None:
            self._waiting.append(entry)
        self._settled += 1
        if self._settled < self.size or not self._waiting:
            return None
        ready, self._waiting = self._waiting, []
        return ready


class Seat:
    """One request's place in a round. Not its thread's identity: a thread that ends can
    hand its identity to the next one started."""

    def __init__(self, taken: Round) -> None:
        self.round = taken
        self.settled = False
        # The items decoded in one batch with this request's: its group's, unless the
        # engine, which may split a group into several batches, says fewer.
        self.rows = 1

    def gather(self, key: Hashable, item: Item, run: Callable[[list[Item]], None]) -> None:
        """Wait until every request of the round has gathered or left, then run each
        group of items of one ``key`` with one call of its ``run`` (on the thread that
        completed the round). Returns when this item's group has run; raises what its
        ``run`` raised. A seat that gathers a second time runs alone, at once."""
        taken = self.round
        with taken._lock:
            again = self.settled
            if not again:
                self.settled = True
                entry = _Entry(key, item, run)
                ready = taken._settle(entry)  # type: ignore[arg-type]
        if again:
            self.rows = 1
            run([item])
            return
        if ready is not None:
            _run_groups(ready)
        entry.done.wait()
        self.rows = entry.rows
        if entry.error is not None:
            raise entry.error

    def leave(self) -> None:
        """This request will not gather (or has finished): the others need not wait for
        it. Idempotent."""
        taken = self.round
        with taken._lock:
            if self.settled:
                return
            self.settled = True
            ready = taken._settle(None)
        if ready is not None:
            _run_groups(ready)


def _run_groups(entries: list[_Entry[object]]) -> None:
    groups: dict[Hashable, list[_Entry[object]]] = {}
    for entry in entries:
        groups.setdefault(entry.key, []).append(entry)
    for group in groups.values():
        try:
            group[0].run([entry.item for entry in group])
        except BaseException as error:  # each waiting request raises it for itself
            for entry in group:
                entry.error = error
        for entry in group:
            entry.rows = len(group)
            entry.done.set()


def current() -> Seat | None:
    """This thread's request's seat in its round, if it was taken with others."""
    return getattr(_local, "seat", None)


def rows() -> int:
    """How many samples the current thread's request's was decoded with (1: alone)."""
    seat = current()
    return 1 if seat is None else seat.rows


def leave() -> None:
    """The current thread's request will not gather: its round need not wait for it."""
    seat = current()
    if seat is not None:
        seat.leave()


@contextmanager
def serving(taken: Round) -> Iterator[None]:
    """Serve one request of ``taken`` on this thread; when it ends, it has left."""
    seat = _local.seat = taken.seat()
    try:
        yield
    finally:
        _local.seat = None
        seat.leave()


def run_together(calls: Sequence[Callable[[], Result]]) -> list[Result | BaseException]:
    """Each call on a thread of its own, all of them one round, as a worker serves the
    connections it took together; their results (or what they raised), in order."""
    together = Round(len(calls))
    results: list[Result | BaseException | None] = [None] * len(calls)

    def serve(index: int, call: Callable[[], Result]) -> None:
        with serving(together):
            try:
                results[index] = call()
            except BaseException as error:  # the caller decides what it means
                results[index] = error

    threads = [threading.Thread(target=serve, args=pair, name=f"round-{pair[0]}")
               for pair in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results  # type: ignore[return-value]  # every slot was filled
