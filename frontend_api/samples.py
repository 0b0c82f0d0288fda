"""What the fan-out hands the handlers: each sample, each failure, and what was gathered.

Plain values, so that handlers and their tests use them without the transport.
"""

from __future__ import annotations

from dataclasses import dataclass

from fanout.protocol import StreamPiece, WorkerCompletion


@dataclass(frozen=True, kw_only=True)
class Sample(WorkerCompletion):
    """One completion as a worker returned it, plus the round trip seen by the front."""

    round_trip: float

    @staticmethod
    def arrived(completion: WorkerCompletion, round_trip: float, host: str) -> Sample:
        # The worker knows its pid and slot, not the address the front reached it on.
        return Sample(**{**vars(completion), "worker": {**completion.worker, "host": host}},
                      round_trip=round_trip)


@dataclass(frozen=True)
class Failure:
    """A sample that did not arrive: its index in the request, a status and why."""

    index: int
    status: int
    reason: str


# One event of a streamed request, with the sample's index: its next text, its end, or
# its failure.
StreamEvent = tuple[int, StreamPiece | Sample | Failure]


@dataclass(frozen=True)
class Gathered:
    """What a request got by its deadline: the samples in order, and the ones that failed."""

    samples: list[Sample]
    failed: list[Failure]
