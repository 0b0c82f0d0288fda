"""The worker tier's WSGI app: ``create_app`` wires routes, ``get_app`` is what gunicorn calls.

``get_app`` runs once in each worker after fork (the master imports no engine): it
loads the pool's model onto the slot's device with the pool's engine, warms it up,
marks the slot ready, and only then returns the app, so a worker takes no traffic before
it can generate.

The master does not import this module either: prometheus_client, imported here through
``worker_api.metrics``, must load after the master has exported its metrics directory.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import falcon

from fanout.http import add_error_handlers
from fanout.layout import Layout, load_layout
from fanout.params import generation_body_limit
from worker_api import metrics
from worker_api.engines import load_engine
from worker_api.resources import (
    Detokenize,
    Generate,
    Generator,
    Health,
    Info,
    ReadySlots,
    Tokenize,
    Vocabulary,
    WorkerIdentity,
)
from worker_api.slots import RESTARTED_ENV, SLOT_ENV, STATE_DIR_ENV, SlotBoard, pool_from_env

log = logging.getLogger(__name__)


def create_app(model: Generator, layout: Layout, identity: WorkerIdentity,
               board: ReadySlots) -> falcon.App:
    router = falcon.routing.CompiledRouter()  # shared with the observer, for route labels
    observer = metrics.WorkerObserver(router, identity.slot, model.memory)
    app = falcon.App(router=router, middleware=[observer])
    add_error_handlers(app)
    body_limit = generation_body_limit(layout.limits, layout.front.max_body_bytes)
    generate = Generate(model, identity, layout.defaults, layout.limits, body_limit,
                        completed=observer.completed)
    app.add_route("/generate", generate)
    app.add_route("/generate/stream", generate, suffix="stream")
    if isinstance(model, Vocabulary):  # a stand-in generator may have no tokenizer
        app.add_route("/tokenize", Tokenize(model, body_limit))
        app.add_route("/detokenize", Detokenize(model, body_limit))
    app.add_route("/health", Health(model, identity, board))
    app.add_route("/info", Info(model, identity))
    app.add_route("/metrics", metrics.metrics_page())
    return app


def get_app() -> falcon.App:
    layout = load_layout()
    pool = pool_from_env(layout)
    slot = pool.slots[int(os.environ.get(SLOT_ENV, "0"))]
    model = load_engine(pool, slot)
    model.warm_up()
    board = SlotBoard(Path(os.environ.get(STATE_DIR_ENV) or tempfile.mkdtemp(prefix="fanout-")))
    # Before the slot shows ready, so that whoever sees it ready sees its boot counted.
    metrics.record_boot(slot, model.load_seconds, os.environ.get(RESTARTED_ENV) == "1",
                        model.memory())
    board.mark_ready(slot.index, os.getpid(), slot.device)
    log.info("worker pid %d serving pool %s slot %d on %s (%s, %s %s, %d threads%s, "
             "loaded in %.1fs)", os.getpid(), pool.name, slot.index, slot.device,
             pool.model.source, pool.engine, pool.precision, slot.threads,
             f", cores {list(slot.cpus)}" if slot.cpus else "", model.load_seconds)
    return create_app(model, layout, WorkerIdentity(pool, slot), board)
