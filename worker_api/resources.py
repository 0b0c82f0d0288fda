"""HTTP handlers of a worker: generate, health, info. Each hands off to the model."""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import falcon

from fanout.http import read_json
from fanout.layout import GenerationDefaults, GenerationLimits, Pool, Slot
from fanout.params import GenerationParams, parse_generation
from fanout.peer import client_gone_check
from worker_api.engines.base import Completion


class Generator(Protocol):
    """What the resources need from the model holder (``worker_api.engines.base.Engine``)."""

    ready: bool

    def generate(self, params: GenerationParams,
                 abandoned: Callable[[], bool] | None = None) -> Completion: ...

    def stream(self, params: GenerationParams,
               abandoned: Callable[[], bool] | None = None) -> Iterator[str | Completion]: ...

    def info(self) -> dict[str, Any]: ...

    def memory(self) -> dict[str, int]: ...


class ReadySlots(Protocol):
    def ready(self) -> dict[int, dict[str, Any]]: ...


class WorkerIdentity:
    """Who answered: reported with every completion so the fan-out can be seen."""

    def __init__(self, pool: Pool, slot: Slot) -> None:
        self.pool, self.slot = pool, slot

    def as_json(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "slot": self.slot.index, "device": self.slot.device,
                "pool": self.pool.name}


NDJSON_TYPE = "application/x-ndjson"


class Generate:
    def __init__(self, model: Generator, identity: WorkerIdentity,
                 defaults: GenerationDefaults, limits: GenerationLimits,
                 max_body_bytes: int, completed: Callable[[Completion], None]) -> None:
        """``completed`` hears of every completion, streamed or not (the metrics)."""
        self.model, self.identity, self.completed = model, identity, completed
        self.defaults, self.limits, self.max_body_bytes = defaults, limits, max_body_bytes

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        params = parse_generation(read_json(req, self.max_body_bytes),
                                  self.defaults, self.limits)
        # The front closes its connection when it stops waiting (deadline, or its own
        # client left): generation stops too, so the worker is free for live requests.
        done = self.model.generate(params, abandoned=client_gone_check(req.env))
        self.completed(done)
        resp.media = {
            "text": done.text, "tokens": done.tokens, "finish_reason": done.finish_reason,
            "time": round(done.time, 4), "seed": done.seed,
            "context_tokens": done.context_tokens, "worker": self.identity.as_json(),
        }

    def on_post_stream(self, req: falcon.Request, resp: falcon.Response) -> None:
        """``POST /generate/stream``: the same completion as NDJSON, text as it comes
        (``{"text": ...}`` lines), then the ``/generate`` answer with ``"done": true``."""
        params = parse_generation(read_json(req, self.max_body_bytes),
                                  self.defaults, self.limits)
        pieces = self.model.stream(params, abandoned=client_gone_check(req.env))
        first = next(pieces)  # a bad parameter is raised here, while a 4xx can still go
        resp.content_type = NDJSON_TYPE
        resp.stream = self._lines(first, pieces)

    def _lines(self, first: str | Completion,
               rest: Iterator[str | Completion]) -> Iterator[bytes]:
        for piece in itertools.chain([first], rest):
            if isinstance(piece, str):
                yield json.dumps({"text": piece}).encode() + b"\n"
            else:
                self.completed(piece)
                yield json.dumps({
                    "done": True, "text": piece.text, "tokens": piece.tokens,
                    "finish_reason": piece.finish_reason, "time": round(piece.time, 4),
                    "seed": piece.seed, "context_tokens": piece.context_tokens,
                    "worker": self.identity.as_json()}).encode() + b"\n"


class Health:
    def __init__(self, model: Generator, identity: WorkerIdentity, board: ReadySlots) -> None:
        self.model, self.identity, self.board = model, identity, board

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        ready = self.board.ready()
        resp.media = {
            "status": "ok" if self.model.ready else "loading",
            "worker": self.identity.as_json(),
            "workers": len(self.identity.pool.slots),
            "ready_slots": {str(slot): record["pid"] for slot, record in sorted(ready.items())},
        }
        if not self.model.ready:
            resp.status = falcon.HTTP_503


class Info:
    def __init__(self, model: Generator, identity: WorkerIdentity) -> None:
        self.model, self.identity = model, identity

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {**self.model.info(), "worker": self.identity.as_json()}
