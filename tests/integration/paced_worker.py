"""A worker tier that streams at the pace a test sets: each piece waits for the test's go.

It runs under the real worker gunicorn config and the real worker resources (the NDJSON
stream of ``POST /generate/stream``, health, slots); only the model is replaced. Every
sample is the same few pieces, and piece ``k`` of every sample is written only once the
test has opened gate ``k`` (a file ``step-k`` in ``$FANOUT_TEST_GATES``); the samples end
at gate ``len(PIECES)``. So a test sees each stage of a stream for as long as it likes,
however fast or busy the machine is:

    gates = Gates(tmp_path)                      # in the test
    ... start the pool with PACED_APP, ask for a stream ...
    gates.open(0)  # every sample writes its first piece; wait for the page to show it
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import falcon

from fanout.protocol import GenerationParams
from fanout.tools.bench.instant_worker import stand_in_app
from worker_api.engines.base import Completion

PACED_APP = "tests.integration.paced_worker:get_app()"
GATES_ENV = "FANOUT_TEST_GATES"
# A stream whose gate never opens ends (as a dropped worker would) rather than hang.
GATE_SECONDS = 60.0
_LOOK_EVERY = 0.005


# The text one sample writes, piece by piece; it differs by seed, as samples do.
PIECES = (" Written", " by sample {seed},", " one piece", " at a time.")


class Gates:
    """The test's side: a folder of gates, each opened once by creating its file."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def open(self, step: int) -> None:
        (self.folder / f"step-{step}").touch()

    @property
    def env(self) -> dict[str, str]:
        return {GATES_ENV: str(self.folder)}


class PacedGenerator:
    """Streams ``pieces(seed)``, each after its gate opens; stops if the front leaves."""

    ready = True

    def __init__(self, gates: Path) -> None:
        self.gates = gates

    def stream(self, params: GenerationParams, abandoned: Callable[[], bool] | None = None
               ) -> Iterator[str | Completion]:
        seed = params.seed if params.seed is not None else random.randrange(1000)
        left = abandoned or (lambda: False)
        written = ""
        for step, piece in enumerate(PIECES):
            if not self._wait(step, left):
                yield Completion(written, step, "abandoned", 0.0, seed, 1)
                return
            written += piece.format(seed=seed)
            yield piece.format(seed=seed)
        finished = self._wait(len(PIECES), left)
        yield Completion(written, len(PIECES), "length" if finished else "abandoned",
                                0.0, seed, 1)

    def generate(self, params: GenerationParams, abandoned: Callable[[], bool] | None = None
                 ) -> Completion:
        *_, done = self.stream(params, abandoned)
        assert isinstance(done, Completion)
        return done

    def _wait(self, step: int, abandoned: Callable[[], bool]) -> bool:
        """Until gate ``step`` opens: True; False if the front left first."""
        gate = self.gates / f"step-{step}"
        deadline = time.monotonic() + GATE_SECONDS
        while not gate.exists():
            if abandoned():
                return False
            if time.monotonic() > deadline:
                raise TimeoutError(f"{gate} was never opened")
            time.sleep(_LOOK_EVERY)
        return True

    def info(self) -> dict[str, Any]:
        return {"model": "paced", "parameters": 0}

    def memory(self) -> dict[str, int]:
        return {}


def get_app() -> falcon.App:
    return stand_in_app(PacedGenerator(Path(os.environ[GATES_ENV])))
