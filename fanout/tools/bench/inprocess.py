"""Model processes driven directly through pipes: the strategies that use no HTTP at all.

Each ``ModelProcess`` is a fresh interpreter (spawn: nothing of the parent's state is
inherited) that loads the model with one of the worker tier's own engines on a fixed
number of CPU threads, warms it up, and then runs the jobs it is sent:

- ``sequential``: n samples one after another (the naive server), with either engine;
- ``batched``: n samples in one transformers ``generate`` call with
  ``num_return_sequences=n`` (transformers only);
- ``rounds``: n samples, ``rows`` at a time decoded as one batch, as a worker decodes the
  requests it took together (``worker_api.rounds``; CTranslate2).

A ``ctranslate2`` process loads the conversion ``convert_once`` made, as a worker loads
the one its gunicorn master made, and imports neither torch nor transformers.

The parent times each job from send to reply, so the figures include what a server in
front of these processes could not avoid (handing the job over), and nothing else.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil

from fanout.layout import Model
from fanout.protocol import GenerationParams
from worker_api.engines.base import Engine

LOAD_SECONDS = 600.0


@dataclass(frozen=True)
class EngineChoice:
    """Which worker engine a process runs: ``transformers`` (float32) or ``ctranslate2``
    on the conversion in ``converted`` (made by ``convert_once``)."""

    name: str
    quantization: str | None = None
    converted: Path | None = None


TRANSFORMERS = EngineChoice("transformers")


@dataclass(frozen=True)
class Job:
    kind: str  # "sequential", "batched" or "rounds"
    params: GenerationParams
    n: int
    rows: int = 1  # "rounds": samples decoded as one batch


@dataclass(frozen=True)
class JobResult:
    seconds: float  # measured in the parent, send to reply
    tokens: list[int]  # new tokens per sample


class ModelProcess:
    """One spawned process holding one copy of the model on ``threads`` CPU threads."""

    def __init__(self, folder: Path, threads: int, engine: EngineChoice = TRANSFORMERS) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe()
        self._process = context.Process(target=_serve,
                                        args=(child_conn, str(folder), threads, engine),
                                        daemon=True)
        self._process.start()
        child_conn.close()

    def wait_ready(self) -> None:
        if not self._conn.poll(LOAD_SECONDS):
            raise TimeoutError(f"model process {self._process.pid} did not load in time")
        ready = self._conn.recv()
        if ready != "ready":
            raise RuntimeError(f"model process failed to load: {ready}")

    def send(self, job: Job) -> float:
        """Hand the job over; returns the send time for ``receive``."""
        started = time.perf_counter()
        self._conn.send((job.kind, asdict(job.params), job.n, job.rows))
        return started

    def receive(self, started: float) -> JobResult:
        tokens = self._conn.recv()
        if isinstance(tokens, str):
            raise RuntimeError(f"model process failed a job: {tokens}")
        return JobResult(time.perf_counter() - started, tokens)

    def run(self, job: Job) -> JobResult:
        return self.receive(self.send(job))

    @property
    def rss_bytes(self) -> int:
        return int(psutil.Process(self._process.pid).memory_info().rss)

    def close(self) -> None:
        if self._process.is_alive():
            self._conn.send(None)
            self._process.join(timeout=30)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._conn.close()


def start_processes(folder: Path, count: int, threads: int,
                    engine: EngineChoice = TRANSFORMERS) -> list[ModelProcess]:
    """``count`` processes, loading in parallel; all ready (or all closed) on return."""
    processes = [ModelProcess(folder, threads, engine) for _ in range(count)]
    try:
        for process in processes:
            process.wait_ready()
    except BaseException:
        close_all(processes)
        raise
    return processes


def close_all(processes: list[ModelProcess]) -> None:
    for process in processes:
        process.close()


def convert_once(folder: Path, quantization: str) -> Path:
    """The model's CTranslate2 conversion (cached as the worker tier caches it), made in a
    child process: the converter loads torch, which the timing parent keeps out of."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
        return child.submit(_ensure_converted, folder, quantization).result()


def _ensure_converted(folder: Path, quantization: str) -> Path:
    from fanout.convert import ensure_converted

    return ensure_converted(Model(str(folder), folder), quantization)[0]


def _load(folder: str, threads: int, engine: EngineChoice) -> Engine:
    """The engine as a worker loads it: one slot's threads, on the CPU."""
    spec = Model(folder, Path(folder))
    if engine.name == "ctranslate2":
        from worker_api.engines.ctranslate2_engine import CTranslate2Engine

        assert engine.converted is not None and engine.quantization is not None
        return CTranslate2Engine(spec, engine.converted, "cpu", engine.quantization, threads)
    # Before torch is imported, so its thread pools are sized once, as in a worker.
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = str(threads)
    from worker_api.engines.transformers_engine import TransformersEngine, set_cpu_threads

    set_cpu_threads(threads)
    return TransformersEngine(spec, "cpu", "float32")


def _serve(conn: Connection, folder: str, threads: int, engine: EngineChoice) -> None:
    try:
        model = _load(folder, threads, engine)
        model.warm_up()
    except Exception as error:  # report it to the parent rather than dying silently
        conn.send(f"{type(error).__name__}: {error}")
        return
    conn.send("ready")
    while (message := conn.recv()) is not None:
        kind, params, n, rows = message
        try:
            conn.send(_run(model, kind, GenerationParams(**params), n, rows))
        except Exception as error:
            conn.send(f"{type(error).__name__}: {error}")


def _run(model: Any, kind: str, params: GenerationParams, n: int, rows: int) -> list[int]:
    if kind == "sequential":
        return [model.generate(sample_params(params, i)).tokens for i in range(n)]
    if kind == "batched":
        return _batched(model, params, n)
    if kind == "rounds":
        return [tokens for start in range(0, n, rows)
                for tokens in _round(model, params, range(start, min(n, start + rows)))]
    raise ValueError(f"unknown job kind {kind!r}")


def _round(model: Engine, params: GenerationParams, indexes: range) -> list[int]:
    """Samples ``indexes`` of a request generated as one round, as the worker serves the
    connections it took together."""
    from worker_api.rounds import run_together

    results = run_together([partial(_tokens, model, sample_params(params, index))
                            for index in indexes])
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results  # type: ignore[return-value]  # no exception among them


def _tokens(model: Engine, params: GenerationParams) -> int:
    return model.generate(params).tokens


def sample_params(params: GenerationParams, index: int) -> GenerationParams:
    """Sample ``index`` of a request: seed + index as the front numbers them, or no seed
    when the request has none (a CTranslate2 sample then runs on the long-lived generator)."""
    return params.with_seed(None if params.seed is None else params.seed + index)


def _batched(model: Any, params: GenerationParams, n: int) -> list[int]:
    """The n samples as one batch: the memory-saving alternative the original authors named."""
    import torch

    ids = torch.tensor([model.context_ids(params.context, params.length, params.max_tokens)])
    torch.manual_seed(params.seed or 0)
    with torch.no_grad():
        output = model.model.generate(
            ids, attention_mask=torch.ones_like(ids), do_sample=True,
            temperature=params.temperature, top_k=params.top_k, top_p=params.top_p,
            max_new_tokens=params.length, min_new_tokens=params.min_tokens or None,
            num_return_sequences=n,
            pad_token_id=model.eos_token_id, eos_token_id=model.eos_token_id)
    new = output[:, ids.shape[1]:].tolist()
    return [row.index(model.eos_token_id) if model.eos_token_id in row else len(row)
            for row in new]
