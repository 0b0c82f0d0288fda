"""Rounds: the requests a worker took together wait for one another by count, never by
clock, and each group of alike samples is decoded by one call.

Every test orders its threads with the seats' own state, never with a pause; a join's
timeout only turns a hang into a failure."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from functools import partial

import pytest

from worker_api import rounds
from worker_api.rounds import Round, Seat

HANG = 30.0  # seconds; reached only when a thread never returns


class Batches:
    """A ``run`` to gather with: records each call, with the thread it ran on."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error
        self.calls: list[tuple[int, list[str]]] = []
        self._lock = threading.Lock()

    def __call__(self, items: list[str]) -> None:
        with self._lock:
            self.calls.append((threading.get_ident(), sorted(items)))
        if self.error is not None:
            raise self.error

    @property
    def items(self) -> list[list[str]]:
        return [items for _, items in self.calls]


class Request(threading.Thread):
    """One request's thread in a round: keeps what its work raised, for the test."""

    def __init__(self, work: Callable[[], object]) -> None:
        super().__init__(daemon=True)
        self.work = work
        self.raised: BaseException | None = None
        self.returned = False

    def run(self) -> None:
        try:
            self.work()
        except BaseException as error:
            self.raised = error
        else:
            self.returned = True

    def finish(self) -> None:
        self.join(HANG)
        assert not self.is_alive(), "a request never returned"


def gather(seat: Seat, key: Hashable, item: str, run: Batches) -> Request:
    """Start a thread that gathers ``item`` on ``seat``."""
    request = Request(partial(seat.gather, key, item, run))
    request.start()
    return request


def settled(*seats: Seat) -> None:
    """Until each seat has gathered or left, so that the test, not the scheduler, says
    which seat settles last. Polls the seats' flags; sleep(0) only yields."""
    deadline = time.monotonic() + HANG
    while not all(seat.settled for seat in seats):
        assert time.monotonic() < deadline, "a seat never settled"
        time.sleep(0)


def test_a_round_gathering_one_key_runs_once_with_every_item() -> None:
    together, batches = Round(3), Batches()
    seats = [together.seat() for _ in range(3)]

    requests = [gather(seat, "k", item, batches) for seat, item in zip(seats, "abc",
                                                                        strict=True)]
    for request in requests:
        request.finish()

    assert batches.items == [["a", "b", "c"]]
    assert batches.calls[0][0] in {request.ident for request in requests}
    assert all(request.returned for request in requests)
    assert [seat.rows for seat in seats] == [3, 3, 3]


def test_a_seat_that_leaves_does_not_hold_back_the_others() -> None:
    together, batches = Round(3), Batches()
    leaving, *seats = [together.seat() for _ in range(3)]

    leaving.leave()
    requests = [gather(seat, "k", item, batches) for seat, item in zip(seats, "ab",
                                                                        strict=True)]
    for request in requests:
        request.finish()

    assert batches.items == [["a", "b"]]
    assert all(request.returned for request in requests)
    assert [seat.rows for seat in seats] == [2, 2] and leaving.rows == 1


def test_when_the_last_to_settle_leaves_the_batch_runs_on_its_thread() -> None:
    together, batches = Round(3), Batches()
    leaving, *seats = [together.seat() for _ in range(3)]
    requests = [gather(seat, "k", item, batches) for seat, item in zip(seats, "ab",
                                                                        strict=True)]
    settled(*seats)
    assert batches.calls == []  # the leaving seat has not settled

    leaving.leave()

    assert batches.calls == [(threading.get_ident(), ["a", "b"])]  # run before it returned
    for request in requests:
        request.finish()
    assert all(request.returned for request in requests)
    assert [seat.rows for seat in seats] == [2, 2]


def test_leaving_twice_counts_once() -> None:
    together, batches = Round(3), Batches()
    leaving, *seats = [together.seat() for _ in range(3)]

    leaving.leave()
    leaving.leave()  # counted twice, the first to gather would run alone
    requests = [gather(seat, "k", item, batches) for seat, item in zip(seats, "ab",
                                                                        strict=True)]
    for request in requests:
        request.finish()

    assert batches.items == [["a", "b"]]


def test_each_key_runs_as_a_group_of_its_own() -> None:
    together, batches = Round(3), Batches()
    seats = [together.seat() for _ in range(3)]

    requests = [gather(seat, key, item, batches)
                for seat, key, item in zip(seats, "xyx", "abc", strict=True)]
    for request in requests:
        request.finish()

    assert sorted(batches.items) == [["a", "c"], ["b"]]
    assert all(request.returned for request in requests)
    assert [seat.rows for seat in seats] == [2, 1, 2]  # its group's size, not the round's


def test_a_failing_run_raises_in_every_gatherer_of_its_group_only() -> None:
    together = Round(3)
    broken, fine = Batches(RuntimeError("the decoder failed")), Batches()
    first, second, last = [together.seat() for _ in range(3)]
    failing = [gather(first, "bad", "a", broken), gather(second, "bad", "b", broken)]
    settled(first, second)

    # The last seat's thread runs both groups, the failing one first.
    unharmed = gather(last, "good", "c", fine)
    for request in [*failing, unharmed]:
        request.finish()

    assert broken.items == [["a", "b"]] and fine.items == [["c"]]
    assert [request.raised for request in failing] == [broken.error, broken.error]
    assert unharmed.raised is None and unharmed.returned
    assert broken.calls[0][0] == unharmed.ident


def test_a_seat_that_gathers_again_runs_alone_at_once() -> None:
    together, batches = Round(3), Batches()
    seat, other, leaving = [together.seat() for _ in range(3)]
    first = gather(seat, "k", "a", batches)
    settled(seat)

    again = gather(seat, "k", "a2", batches)  # counted again, it would wait for the round
    again.finish()

    assert batches.calls == [(again.ident, ["a2"])] and again.returned
    later = gather(other, "k", "b", batches)
    leaving.leave()
    for request in (first, later):
        request.finish()
    assert batches.items == [["a2"], ["a", "b"]]  # the round's batch is without it
    assert seat.rows == 2


def test_a_seat_that_left_and_then_gathers_runs_alone_at_once() -> None:
    together, batches = Round(3), Batches()
    seat, *others = [together.seat() for _ in range(3)]
    seat.leave()

    alone = gather(seat, "k", "a", batches)
    alone.finish()

    assert batches.calls == [(alone.ident, ["a"])] and alone.returned
    requests = [gather(other, "k", item, batches) for other, item in zip(others, "bc",
                                                                          strict=True)]
    for request in requests:
        request.finish()
    assert batches.items == [["a"], ["b", "c"]]


def test_seats_settled_one_after_another_on_one_thread_do_not_wait_for_each_other() -> None:
    # A thread's identity is no seat: the OS hands an ended thread's to the next one.
    together, batches = Round(2), Batches()
    first, second = together.seat(), together.seat()

    def serve_both() -> None:
        first.leave()
        second.gather("k", "b", batches)

    request = Request(serve_both)
    request.start()
    request.finish()

    assert request.returned and batches.calls == [(request.ident, ["b"])]
    assert second.rows == 1


def test_serving_seats_the_thread_and_leaves_the_round_at_exit() -> None:
    together, batches = Round(2), Batches()
    other = together.seat()
    waiting = gather(other, "k", "b", batches)
    seen: list[Seat | None] = []

    with rounds.serving(together):
        seat = rounds.current()
        assert seat is not None and seat.round is together and seat is not other
        elsewhere = Request(lambda: seen.append(rounds.current()))
        elsewhere.start()
        elsewhere.finish()
        settled(other)
        assert not seat.settled and batches.calls == []

    assert seen == [None]  # the seat is this thread's alone
    assert rounds.current() is None and seat.settled
    assert batches.calls == [(threading.get_ident(), ["b"])]  # its leaving was the last
    waiting.finish()
    assert waiting.returned


def test_serving_leaves_even_when_the_request_fails() -> None:
    together = Round(2)
    with pytest.raises(ValueError), rounds.serving(together):
        seat = rounds.current()
        raise ValueError("the request failed")
    assert seat is not None and seat.settled and rounds.current() is None


def test_the_module_functions_act_on_the_current_threads_seat() -> None:
    assert rounds.current() is None and rounds.rows() == 1
    rounds.leave()  # outside a round: nothing to leave

    together, batches = Round(2), Batches()
    rows: list[int] = []

    def serve(item: str) -> None:
        with rounds.serving(together):
            seat = rounds.current()
            assert seat is not None
            seat.gather("k", item, batches)
            rows.append(rounds.rows())

    requests = [Request(partial(serve, item)) for item in "ab"]
    for request in requests:
        request.start()
    for request in requests:
        request.finish()
    assert all(request.returned for request in requests)
    assert rows == [2, 2] and batches.items == [["a", "b"]]

    with rounds.serving(Round(2)):
        seat = rounds.current()
        rounds.leave()
        assert seat is not None and seat.settled  # the exit's leave is then a no-op
