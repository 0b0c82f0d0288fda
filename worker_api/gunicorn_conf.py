"""gunicorn settings and hooks for one pool's worker-tier server.

Run as ``gunicorn -c python:worker_api.gunicorn_conf 'worker_api.app:get_app()'`` with
``FANOUT_POOL`` naming the pool. The master only reads the layout (no torch, no CUDA);
``pre_fork`` hands each new worker the lowest free slot, ``post_fork`` pins the child to
that slot's device (and cores), and the app factory loads the model inside the child.
``on_starting``, before any fork, finds a CTranslate2 pool's conversion in the cache (or
has it made) and makes the directory where the workers keep their Prometheus metrics.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from fanout.convert import prepare
from fanout.layout import LayoutError, load_layout
from fanout.logs import logging_config
from worker_api.engines import CONVERTED_ENV
from worker_api.gathering import IdleBoard, gathering_worker
from worker_api.slots import (
    METRICS_DIR_ENV,
    RESTARTED_ENV,
    SLOT_ENV,
    STATE_DIR_ENV,
    SlotBoard,
    lowest_free_slot,
    pool_from_env,
)

try:
    _layout = load_layout()
except LayoutError as error:
    raise SystemExit(f"fanout: {error}") from None
_pool = pool_from_env(_layout)

bind = [str(_pool.bind)]
workers = len(_pool.slots)
# Sync workers take one request at a time and close the connection after it (no
# keep-alive). An idle worker is therefore the only one blocked in accept(), so the
# kernel hands each of a fan-out's N connections to a different idle worker: gunicorn's
# accept loop is the load balancer. Threaded or async workers would break that. A
# CTranslate2 pool's worker taking one also takes those queued past one for each other
# idle worker (none is left for them) and decodes them as one batch: worker_api.gathering.
worker_class = (gathering_worker(_pool.batch, IdleBoard(len(_pool.slots)))
                if _pool.batch > 1 else "sync")
timeout = int(_pool.worker_timeout)
graceful_timeout = int(_layout.limits.max_time) + 5
proc_name = f"fanout-pool-{_pool.name}"
preload_app = False  # the model must load in each worker, after its device is pinned
loglevel = os.environ.get("FANOUT_LOG_LEVEL", "info")
logconfig_dict = logging_config(loglevel)
logger_class = "fanout.logs.GunicornLogger"  # our JSON line per request; no access log
# Several masters run side by side; gunicorn 24+'s shared default control socket would clash.
control_socket_disable = True

_board: SlotBoard | None = None
_metrics_dir: Path | None = None
_slots_started: set[int] = set()  # a new worker in one of these is a restart
# A layout's cuda:N counts the GPUs this server may use: if the operator already narrowed
# them (CUDA_VISIBLE_DEVICES=2,3), cuda:0 is the first of those, not the host's GPU 0.
_visible_gpus = [g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g]


def on_starting(server: Any) -> None:
    """Convert the model for CTranslate2 if the pool needs it and it is not cached, make
    the ready-slot board and the metrics directory; workers inherit their paths through
    the environment."""
    global _board, _metrics_dir
    _check_cpus()
    if _pool.engine == "ctranslate2":
        # Once, before any worker forks: N workers converting at once would race.
        os.environ[CONVERTED_ENV] = str(prepare(_pool, _layout.source))
    directory = Path(tempfile.mkdtemp(prefix=f"fanout-{_pool.name}-"))
    os.environ[STATE_DIR_ENV] = str(directory)
    _board = SlotBoard(directory)
    # Fresh per server: files left by another run (or another pool) would add to ours.
    # prometheus_client reads the variable when first imported, which is in each worker:
    # neither this module nor what it imports may import prometheus_client.
    _metrics_dir = Path(tempfile.mkdtemp(prefix=f"fanout-{_pool.name}-metrics-"))
    os.environ[METRICS_DIR_ENV] = str(_metrics_dir)


def pre_fork(server: Any, worker: Any) -> None:
    # Runs in the master, where server.WORKERS maps pid -> worker of every live worker.
    taken = (getattr(w, "fanout_slot", None) for w in server.WORKERS.values())
    worker.fanout_slot = lowest_free_slot(len(_pool.slots), taken)
    worker.fanout_restart = worker.fanout_slot in _slots_started
    _slots_started.add(worker.fanout_slot)


def post_fork(server: Any, worker: Any) -> None:
    # Runs in the child before the app (and so torch) is imported: CUDA is not yet
    # initialised, so restricting the visible devices here pins the whole process.
    slot = _pool.slots[worker.fanout_slot]
    os.environ[SLOT_ENV] = str(slot.index)
    os.environ[RESTARTED_ENV] = "1" if worker.fanout_restart else "0"
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu_for(slot.cuda_index) if slot.is_cuda else ""
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = str(slot.threads)
    if slot.cpus:
        # Before any thread pool starts: its threads inherit the mask.
        os.sched_setaffinity(0, slot.cpus)
    server.log.info("worker pid %s takes slot %d (%s)", worker.pid, slot.index, slot.device)


def _check_cpus() -> None:
    """Every core a slot names must be one this server may run on (the layout may have
    been written for another machine)."""
    allowed = os.sched_getaffinity(0)
    for slot in _pool.slots:
        missing = sorted(set(slot.cpus) - allowed)
        if missing:
            raise SystemExit(f"fanout: {_layout.source}: pools.{_pool.name}.slots"
                             f"[{slot.index}].cpus names core {missing[0]}, but this server "
                             f"may only run on cores {sorted(allowed)}")


def gpu_for(index: int | None) -> str:
    """The CUDA_VISIBLE_DEVICES value that shows a worker only its slot's GPU."""
    if index is None:
        return ""
    if not _visible_gpus:
        return str(index)
    if index >= len(_visible_gpus):
        raise RuntimeError(f"slot asks for cuda:{index} but CUDA_VISIBLE_DEVICES lists only "
                           f"{len(_visible_gpus)} GPUs ({','.join(_visible_gpus)})")
    return _visible_gpus[index]


def child_exit(server: Any, worker: Any) -> None:
    # Runs in the master once a worker is reaped; its slot becomes free for the respawn.
    if _board is not None and hasattr(worker, "fanout_slot"):
        _board.clear(worker.fanout_slot, worker.pid)
    if _metrics_dir is not None:
        # Imported here, once on_starting has set the directory (see there). A dead
        # worker's live gauges (memory, load time) go; its counters stay in the sums.
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid, str(_metrics_dir))


def on_exit(server: Any) -> None:
    for directory in (_board.directory if _board else None, _metrics_dir):
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)


