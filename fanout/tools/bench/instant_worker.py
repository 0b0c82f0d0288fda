"""A worker tier whose "model" answers at once, to time what the front itself costs.

It runs under the real worker gunicorn config and the real worker resources (request
parsing, slot board, health); only the generator is replaced, so a fan-out against it
measures the front, the HTTP hops and the worker's request handling, and no generation.

    FANOUT_POOL=small gunicorn -c python:worker_api.gunicorn_conf \
        'fanout.tools.bench.instant_worker:get_app()'
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import falcon

from fanout.layout import load_layout
from fanout.protocol import GenerationParams
from worker_api.app import create_app
from worker_api.engines.base import Completion
from worker_api.resources import Generator, WorkerIdentity
from worker_api.slots import SLOT_ENV, STATE_DIR_ENV, SlotBoard, pool_from_env


class InstantGenerator:
    """Returns ``length`` words of filler without computing anything."""

    ready = True

    def generate(self, params: GenerationParams,
                 abandoned: Callable[[], bool] | None = None) -> Completion:
        return Completion(text=" word" * params.length, tokens=params.length,
                                 finish_reason="length", time=0.0, seed=params.seed or 0,
                                 context_tokens=1)

    def stream(self, params: GenerationParams,
               abandoned: Callable[[], bool] | None = None) -> Iterator[str | Completion]:
        done = self.generate(params)
        yield done.text
        yield done

    def info(self) -> dict[str, Any]:
        return {"model": "instant", "parameters": 0}

    def memory(self) -> dict[str, int]:
        return {}  # no model to hold; measuring per request would only add to the timings


def stand_in_app(generator: Generator) -> falcon.App:
    """The real worker app of this process's pool and slot around ``generator``, the slot
    marked ready at once: what a stand-in worker's ``get_app`` returns."""
    layout = load_layout()
    pool = pool_from_env(layout)
    slot = pool.slots[int(os.environ.get(SLOT_ENV, "0"))]
    board = SlotBoard(Path(os.environ.get(STATE_DIR_ENV) or tempfile.mkdtemp(prefix="fanout-")))
    board.mark_ready(slot.index, os.getpid(), slot.device)
    return create_app(generator, layout, WorkerIdentity(pool, slot), board)


def get_app() -> falcon.App:
    return stand_in_app(InstantGenerator())
