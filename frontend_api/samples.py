"""What goes into a fan-out and what comes out: the request for N samples, each sample,
each failure, and what was gathered.

Plain values, so that handlers and their tests use them without the transport.
"""

from __future__ import annotations

from dataclasses import dataclass

from fanout.params import MAX_SEED
from fanout.protocol import GenerationParams, StreamPiece, WorkerCompletion


@dataclass(frozen=True)
class AutocompleteRequest:
    """A fan-out: which pool, how many samples, and the shared parameters.

    ``prompts``, when set, is a batch (OpenAI's list of prompts): ``n_samples`` is then
    spread evenly over them, prompt by prompt, so sample i answers prompt
    ``i // (n_samples // len(prompts))``. ``params`` is the first prompt's.

    ``distinct``: a sample that repeats another of its prompt, or one of ``exclude``
    (compared with whitespace trimmed and collapsed), or is empty, is sent again with the
    next seed while the deadline allows (``frontend_api.fanout``).
    """

    model_size: str
    n_samples: int
    params: GenerationParams
    prompts: tuple[GenerationParams, ...] = ()
    distinct: bool = False
    exclude: tuple[str, ...] = ()

    @property
    def per_prompt(self) -> int:
        return self.n_samples // max(1, len(self.prompts))

    def sample_params(self) -> list[GenerationParams]:
        """Per-sample parameters; a given seed becomes seed, seed+1, ... so samples of a
        prompt differ (each prompt of a batch starts from the seed again)."""
        seed = self.params.seed
        return [prompt.with_seed(None if seed is None else (seed + i) % (MAX_SEED + 1))
                for prompt in self.prompts or (self.params,) for i in range(self.per_prompt)]


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
    resampled: int = 0  # samples sent again for repeating another (``distinct``)
