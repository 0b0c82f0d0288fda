"""What the engine alone can do: a pool's throughput with no HTTP, the soak's yardstick.

One model process per slot of the pool (CPU slots, the slot's threads, the pool's engine
and quantization, loaded as a worker loads it: ``fanout.tools.bench.inprocess``), every
one generating the soak's request, one sample after another (or ``rows`` at a time as
one batch, as a worker with that many requests queued decodes them), for the same
stretch of time, all at once. Completions per second over that stretch is what the
engine does on this host with this model and nothing around it: what the front, the HTTP
hops, the edge and the load's own clients cost shows as the distance from it (measured
in whole batches, the most the tiers could serve).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from fanout.layout import Pool
from fanout.protocol import GenerationParams
from fanout.tools.bench.inprocess import (
    TRANSFORMERS,
    EngineChoice,
    Job,
    close_all,
    convert_once,
    start_processes,
)

CALIBRATION_SAMPLES = 5  # timed one at a time, to size each process's run


@dataclass(frozen=True)
class Ceiling:
    processes: int
    threads: int
    seconds: float  # wall time of the run, all processes together
    completions: int
    rows: int = 1  # samples each process decoded as one batch

    @property
    def completions_per_s(self) -> float:
        return self.completions / self.seconds

    def summary(self) -> dict[str, Any]:
        return {"processes": self.processes, "threads": self.threads, "rows": self.rows,
                "seconds": round(self.seconds, 3), "completions": self.completions,
                "completions_per_s": round(self.completions_per_s, 2)}


def engine_ceiling(pool: Pool, params: GenerationParams, seconds: float,
                   rows: int = 1) -> Ceiling:
    """``len(pool.slots)`` processes generating ``params`` (one sample's, as the front
    sends it to a worker) back to back for about ``seconds``, one at a time or ``rows``
    at a time as one batch (CTranslate2). CPU only: a GPU pool's ceiling is not measured
    here."""
    if any(slot.is_cuda for slot in pool.slots):
        raise ValueError("the engine ceiling runs CPU slots only")
    if pool.model.path is None:
        raise ValueError("the engine ceiling needs a local model folder")
    folder, threads = pool.model.path, pool.slots[0].threads
    engine = TRANSFORMERS
    if pool.engine == "ctranslate2":
        assert pool.quantization is not None
        engine = EngineChoice("ctranslate2", pool.quantization,
                              convert_once(folder, pool.quantization))
    processes = start_processes(folder, len(pool.slots), threads, engine)
    try:
        kind = "rounds" if rows > 1 else "sequential"
        calibration = CALIBRATION_SAMPLES * rows
        one = processes[0].run(Job(kind, params, calibration, rows)).seconds
        # One process alone ran ``calibration`` samples in ``one``; side by side, more
        # processes than cores share them, so each is given about ``seconds`` of work at
        # that share (whole batches).
        share = min(1.0, (os.cpu_count() or 1) / len(processes))
        batches = max(CALIBRATION_SAMPLES, round(seconds * share * CALIBRATION_SAMPLES / one))
        job = Job(kind, params, batches * rows, rows)
        started = time.perf_counter()
        sent = [(process, process.send(job)) for process in processes]
        done = sum(len(process.receive(at).tokens) for process, at in sent)
        wall = time.perf_counter() - started
    finally:
        close_all(processes)
    return Ceiling(len(processes), threads, wall, done, rows)
