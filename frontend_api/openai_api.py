"""OpenAI-compatible routes on the front: ``POST /v1/completions`` and ``GET /v1/models``.

Tools built for OpenAI's API (its client libraries among them) can use fanout as they
are: a pool is a ``model``, and the ``n`` choices come from the same fan-out as
``/autocomplete``, one worker per choice. Request, answer and error shapes follow
OpenAI's completions API; errors under ``/v1/`` use its ``{"error": {...}}`` body.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time
import uuid
from collections.abc import Generator, Iterator
from typing import Any

import falcon

from fanout.http import JSON_TYPE, read_json, serialize_error
from fanout.layout import Layout
from fanout.params import AutocompleteRequest, parse_completion
from fanout.peer import client_gone_check
from frontend_api.admission import Admission
from frontend_api.fanout import POOL_DOWN_RETRY_AFTER, WorkerTierError
from frontend_api.resources import Failure, Fanout, Sample, StreamEvent

OPENAI_PREFIX = "/v1/"
# OpenAI reports why a choice ended as "stop" or "length"; a worker's max_time running
# out also cut the text short, which is "length" there.
FINISH_REASONS = {"stop": "stop", "length": "length", "time": "length"}
CREATED = int(time.time())  # when this front started: the pools' "created" in /v1/models


class Completions:
    """``POST /v1/completions``."""

    def __init__(self, fanout: Fanout, layout: Layout, admission: Admission) -> None:
        self.fanout, self.layout, self.admission = fanout, layout, admission

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        layout = self.layout
        parsed = parse_completion(read_json(req, layout.front.max_body_bytes),
                                  layout.defaults, layout.limits, layout.pools,
                                  layout.front.max_samples)
        request = parsed.request
        if parsed.stream:
            self.stream(req, resp, request)
            return
        with self.admission.admit(request.model_size, request.n_samples,
                                  getattr(req.context, "api_key", None)):
            gathered = self.fanout.complete(request, client_gone_check(req.env))
        choices = [choice(index, sample) for index, sample in zip(
            sorted(set(range(request.n_samples)) - {f.index for f in gathered.failed}),
            gathered.samples, strict=True)]
        prompt_tokens = max((s.context_tokens for s in gathered.samples), default=0)
        completion_tokens = sum(s.tokens for s in gathered.samples)
        resp.media = {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": request.model_size,
            "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }


    def stream(self, req: falcon.Request, resp: falcon.Response,
               request: AutocompleteRequest) -> None:
        """Server-sent events as OpenAI streams them: text chunks tagged with their
        choice's ``index`` as the workers produce them, each choice's ``finish_reason``
        in its last chunk, then ``data: [DONE]``."""
        held = contextlib.ExitStack()  # the admission place, held until the stream ends
        held.enter_context(self.admission.admit(request.model_size, request.n_samples,
                                                getattr(req.context, "api_key", None)))
        try:
            events = self.fanout.stream(request)
            # The first event decides the status: a pool that is down or a request the
            # workers refuse is still an HTTP error, not a stream of failures.
            first = next(events)
            item = first[1]
            if isinstance(item, Failure) and (item.status == 503 or item.status < 500):
                events.close()
                raise WorkerTierError(item.status, "Worker tier error", item.reason,
                                      retry_after=POOL_DOWN_RETRY_AFTER
                                      if item.status == 503 else None)
        except BaseException:
            held.close()
            raise
        resp.content_type = "text/event-stream"
        resp.set_header("Cache-Control", "no-cache")
        resp.set_header("X-Accel-Buffering", "no")  # the edge passes each event on at once
        resp.stream = EventStream(_events(first, events, request.model_size), events, held)


class EventStream:
    """The response body of a stream; ``close`` (the server calls it however the stream
    ends, the client gone included) cuts the workers off and frees the admission place."""

    def __init__(self, chunks: Iterator[bytes], events: Generator[StreamEvent, None, None],
                 held: contextlib.ExitStack) -> None:
        self.chunks, self.events, self.held = chunks, events, held

    def __iter__(self) -> Iterator[bytes]:
        return self.chunks

    def close(self) -> None:
        try:
            self.events.close()
        finally:
            self.held.close()


def _events(first: StreamEvent, rest: Iterator[StreamEvent], model: str) -> Iterator[bytes]:
    ident, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

    def chunk(index: int, text: str, finish_reason: str | None) -> bytes:
        body = {"id": ident, "object": "text_completion", "created": created, "model": model,
                "choices": [{"text": text, "index": index, "logprobs": None,
                             "finish_reason": finish_reason}]}
        return b"data: " + json.dumps(body).encode() + b"\n\n"

    for index, item in itertools.chain([first], rest):
        if isinstance(item, str):
            yield chunk(index, item, None)
        elif isinstance(item, Failure):
            # OpenAI has no finish reason for a failed choice; fanout's is "error".
            yield chunk(index, "", "error")
        else:
            yield chunk(index, "", FINISH_REASONS.get(item.finish_reason, "stop"))
    yield b"data: [DONE]\n\n"


def choice(index: int, sample: Sample) -> dict[str, Any]:
    return {"text": sample.text, "index": index, "logprobs": None,
            "finish_reason": FINISH_REASONS.get(sample.finish_reason, "stop")}


class Models:
    """``GET /v1/models``: the pools, as OpenAI lists models."""

    def __init__(self, layout: Layout) -> None:
        self.body = {"object": "list", "data": [
            {"id": name, "object": "model", "created": CREATED, "owned_by": "fanout"}
            for name in layout.pools]}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.body


def error_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 404:
        return "not_found_error"
    if status == 429:
        return "rate_limit_error"
    return "invalid_request_error" if status < 500 else "server_error"


def serialize_front_error(req: falcon.Request, resp: falcon.Response,
                          exc: falcon.HTTPError) -> None:
    """OpenAI's error body under /v1/, fanout's own everywhere else."""
    if not req.path.startswith(OPENAI_PREFIX):
        serialize_error(req, resp, exc)
        return
    body = exc.to_dict()
    status = int(exc.status_code)
    resp.content_type = JSON_TYPE
    resp.data = json.dumps({"error": {
        "message": body.get("description") or body.get("title") or "error",
        "type": error_type(status),
        "param": body.get("field"),
        "code": "model_not_found" if status == 404 and body.get("field") == "model"
        else None,
    }}, ensure_ascii=True).encode("ascii")
