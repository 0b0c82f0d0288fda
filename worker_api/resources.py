"""HTTP handlers of a worker: generate, tokenize, health, info. Each hands off to the model."""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable, Iterator
from typing import Any, Protocol, runtime_checkable

import falcon

from fanout.http import read_json
from fanout.layout import GenerationDefaults, GenerationLimits, Pool, Slot
from fanout.params import ParamError, parse_generation
from fanout.peer import client_gone_check
from fanout.protocol import NDJSON_TYPE, GenerationParams, StreamPiece, encode_line
from worker_api.engines.base import Completion, Piece


class Generator(Protocol):
    """What the resources need from the model holder (``worker_api.engines.base.Engine``)."""

    ready: bool

    def generate(self, params: GenerationParams,
                 abandoned: Callable[[], bool] | None = None) -> Completion: ...

    def stream(self, params: GenerationParams, abandoned: Callable[[], bool] | None = None
               ) -> Iterator[str | Piece | Completion]: ...

    def info(self) -> dict[str, Any]: ...

    def memory(self) -> dict[str, int]: ...


@runtime_checkable
class Vocabulary(Protocol):
    """What ``/tokenize`` and ``/detokenize`` need: a model holder that has a tokenizer
    (the engines do; a stand-in generator need not)."""

    window: int
    vocab_size: int

    def tokenize(self, text: str) -> list[int]: ...

    def detokenize(self, ids: list[int], special: bool = False) -> str: ...


class ReadySlots(Protocol):
    def ready(self) -> dict[int, dict[str, Any]]: ...


class WorkerIdentity:
    """Who answered: reported with every completion so the fan-out can be seen."""

    def __init__(self, pool: Pool, slot: Slot) -> None:
        self.pool, self.slot = pool, slot

    def as_json(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "slot": self.slot.index, "device": self.slot.device,
                "pool": self.pool.name}


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
        resp.media = done.to_wire(self.identity.as_json()).to_json()

    def on_post_stream(self, req: falcon.Request, resp: falcon.Response) -> None:
        """``POST /generate/stream``: the same completion as NDJSON, text as it comes
        (``{"text": ...}`` lines, with ``logprobs`` entries when asked; with echo the first
        is ``{"text": "", "prompt_text": ...}``), then the ``/generate`` answer with
        ``"done": true``."""
        params = parse_generation(read_json(req, self.max_body_bytes),
                                  self.defaults, self.limits)
        pieces = self.model.stream(params, abandoned=client_gone_check(req.env))
        first = next(pieces)  # a bad parameter is raised here, while a 4xx can still go
        resp.content_type = NDJSON_TYPE
        resp.stream = self._lines(first, pieces)

    def _lines(self, first: str | Piece | Completion,
               rest: Iterator[str | Piece | Completion]) -> Iterator[bytes]:
        for piece in itertools.chain([first], rest):
            if isinstance(piece, str):
                yield encode_line(StreamPiece(piece))
            elif isinstance(piece, Piece):
                yield encode_line(piece.to_wire())
            else:
                self.completed(piece)
                yield encode_line(piece.to_wire(self.identity.as_json()))


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


class Tokenize:
    """``POST /tokenize`` ``{"prompt": str}``: its token ids, as vLLM answers."""

    def __init__(self, model: Vocabulary, max_body_bytes: int) -> None:
        self.model, self.max_body_bytes = model, max_body_bytes

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        prompt = _field(read_json(req, self.max_body_bytes), "prompt", str, "a string")
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ParamError("prompt", f"is not valid Unicode: a lone surrogate at "
                                       f"character {exc.start}") from None
        tokens = self.model.tokenize(prompt)
        resp.media = {"tokens": tokens, "count": len(tokens), "max_model_len": self.model.window}


class Detokenize:
    """``POST /detokenize`` ``{"tokens": [int]}``: their text (special tokens shown)."""

    def __init__(self, model: Vocabulary, max_body_bytes: int) -> None:
        self.model, self.max_body_bytes = model, max_body_bytes

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        tokens = _field(read_json(req, self.max_body_bytes), "tokens", list,
                        "a list of token ids")
        for token in tokens:
            if isinstance(token, bool) or not isinstance(token, int) \
                    or not 0 <= token < self.model.vocab_size:
                raise ParamError("tokens", f"token ids are integers from 0 to "
                                           f"{self.model.vocab_size - 1}, not "
                                           f"{json.dumps(token)[:40]}")
        resp.media = {"prompt": self.model.detokenize(tokens, special=True)}


def _field(body: Any, name: str, kind: type, what: str) -> Any:
    """The body's one field ``name``, of JSON type ``kind`` (``what`` names it in words);
    anything else is a 400 naming the field, as ``parse_generation`` words them."""
    if not isinstance(body, dict):
        raise ParamError("body", "must be a JSON object")
    unknown = sorted(set(body) - {name})
    if unknown:
        raise ParamError(unknown[0].encode("utf-8", "backslashreplace").decode(),
                         f"unknown field (allowed: {name})")
    value = body.get(name)
    if not isinstance(value, kind):
        raise ParamError(name, "is required" if value is None else f"must be {what}")
    return value
