"""The worker tier's Prometheus metrics, summed over the pool's worker processes.

A pool's server runs one gunicorn worker per slot, and a scrape reaches whichever worker
is idle. So each worker writes its metrics to files of its own in the directory the
master made (``$PROMETHEUS_MULTIPROC_DIR``, see ``gunicorn_conf``), and ``GET /metrics``
on any worker reads them all. Series carry the worker's ``slot``; counters keep what a
dead worker counted, gauges of a dead worker go (``child_exit`` marks it dead).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

import falcon
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.multiprocess import MultiProcessCollector

from fanout.exposition import MetricsPage
from fanout.layout import Slot
from fanout.observe import RequestObserver, RequestRecord, method_label, note
from worker_api.resources import Completion
from worker_api.slots import METRICS_DIR_ENV

GENERATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0)
RATE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)

REQUESTS = Counter("fanout_worker_requests", "HTTP requests answered, by route template, "
                   "method, status and slot", ["route", "method", "status", "slot"])
GENERATION = Histogram("fanout_worker_generation_seconds", "Time the model took for one "
                       "completion, by slot", ["slot"], buckets=GENERATION_BUCKETS)
TOKENS = Counter("fanout_worker_generated_tokens", "Tokens generated, by slot", ["slot"])
TOKEN_RATE = Histogram("fanout_worker_tokens_per_second", "Tokens per second of each "
                       "completion, by slot", ["slot"], buckets=RATE_BUCKETS)
# Samples a worker decoded in one batch, from requests it took together (worker_api.rounds).
BATCH_ROWS = Histogram("fanout_worker_batch_rows", "For each completion, how many samples "
                       "were decoded in one batch with it (1: alone), by slot", ["slot"],
                       buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64))
RESTARTS = Counter("fanout_worker_restarts", "Workers started into a slot that an earlier "
                   "worker held (it died or was killed), by slot", ["slot"])
# The live worker's figure per slot: a dead worker's is dropped, the newest one counts.
LOAD_SECONDS = Gauge("fanout_worker_model_load_seconds", "How long the slot's worker took "
                     "to load its model", ["slot"], multiprocess_mode="livemostrecent")
MEMORY = Gauge("fanout_worker_memory_bytes", "Memory the slot's worker holds, by kind: rss; "
               "on a GPU also cuda_allocated and cuda_reserved (the CUDA allocator's)",
               ["slot", "device", "kind"], multiprocess_mode="liveall")

MemoryProbe = Callable[[], Mapping[str, int]]


class WorkerObserver(RequestObserver):
    """Counts every request of one worker, and each completion it generates."""

    def __init__(self, router: falcon.routing.CompiledRouter, slot: Slot,
                 memory: MemoryProbe) -> None:
        super().__init__(router)
        self.slot, self.label, self.memory = slot, str(slot.index), memory

    def finished(self, req: falcon.Request, resp: falcon.Response, route: str, seconds: float,
                 record: RequestRecord) -> None:
        REQUESTS.labels(route, method_label(req.method), str(resp.status_code),
                        self.label).inc()
        record.fields["slot"] = self.slot.index

    def completed(self, done: Completion) -> None:
        """One completion generated, streamed or not (``Generate`` calls this)."""
        TOKENS.labels(self.label).inc(done.tokens)
        GENERATION.labels(self.label).observe(done.time)
        if done.time > 0:
            TOKEN_RATE.labels(self.label).observe(done.tokens / done.time)
        BATCH_ROWS.labels(self.label).observe(done.batch)
        # Generation is what grows a worker's memory: measure it after each one.
        record_memory(self.slot, self.memory())
        # Why it ended ("abandoned": its front left) tells a stopped sample from a finished
        # one. A stream ends after its log line: no fields there.
        note(tokens=done.tokens, finish_reason=done.finish_reason, batch=done.batch)


def record_boot(slot: Slot, load_seconds: float, restarted: bool,
                memory: Mapping[str, int]) -> None:
    """What a worker reports once its model is loaded and warm."""
    label = str(slot.index)
    RESTARTS.labels(label).inc(1 if restarted else 0)  # 0: the series exists from the start
    LOAD_SECONDS.labels(label).set(load_seconds)
    record_memory(slot, memory)


def record_memory(slot: Slot, memory: Mapping[str, int]) -> None:
    for name, value in memory.items():
        MEMORY.labels(str(slot.index), slot.device, name.removesuffix("_bytes")).set(value)


def metrics_page() -> MetricsPage:
    """Every worker's metrics under gunicorn; this process's alone outside it (unit tests)."""
    directory = os.environ.get(METRICS_DIR_ENV)
    if not directory:
        return MetricsPage(REGISTRY)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    return MetricsPage(registry)
