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
import logging
import math
import time
import uuid
from collections.abc import Generator, Iterator, Mapping
from typing import Any

import falcon

from fanout.http import JSON_TYPE, FieldError, read_json, serialize_error
from fanout.layout import Layout
from fanout.peer import client_gone_check
from fanout.protocol import LogprobsJson, StreamPiece
from frontend_api.admission import Admission
from frontend_api.errors import POOL_DOWN_RETRY_AFTER, WorkerTierError
from frontend_api.openai_request import CompletionRequest, parse_completion
from frontend_api.resources import Fanout
from frontend_api.samples import Failure, Sample, StreamEvent

log = logging.getLogger(__name__)

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
                                  layout.defaults, layout.limits, layout.names,
                                  layout.front.max_samples)
        if parsed.ignored:
            # As vLLM does: a client's own fields are no reason to fail it, but worth a line.
            log.warning("POST /v1/completions: ignored fields OpenAI's API does not have: %s",
                        ", ".join(parsed.ignored))
        request = parsed.request
        if parsed.stream:
            self.stream(req, resp, parsed)
            return
        with self.admission.admit(request.model_size, request.n_samples,
                                  getattr(req.context, "api_key", None)):
            gathered = self.fanout.complete(request, client_gone_check(req.env))
        arrived = sorted(set(range(request.n_samples)) - {f.index for f in gathered.failed})
        by_index = dict(zip(arrived, gathered.samples, strict=True))
        choices: list[dict[str, Any]] = []
        for prompt in range(len(request.prompts) or 1):
            choices += _choices(parsed, prompt, by_index)
        resp.media = {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": request.model_size,
            "choices": choices,
            "usage": _usage(request.per_prompt, by_index),
        }
        if request.distinct:  # fanout's extension: repeats sent again for other texts
            resp.media["resampled"] = gathered.resampled

    def stream(self, req: falcon.Request, resp: falcon.Response,
               parsed: CompletionRequest) -> None:
        """Server-sent events as OpenAI streams them: text chunks tagged with their
        choice's ``index`` as the workers produce them, each choice's ``finish_reason``
        in its last chunk, the usage when asked, then ``data: [DONE]``."""
        request = parsed.request
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
        resp.stream = EventStream(_events(first, events, parsed), events, held)


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


def _events(first: StreamEvent, rest: Iterator[StreamEvent],
            parsed: CompletionRequest) -> Iterator[bytes]:
    ident, created, model = f"cmpl-{uuid.uuid4().hex}", int(time.time()), \
        parsed.request.model_size
    logprobs_sent: dict[int, int] = {}  # per choice, the logprob entries streamed so far
    echoed: set[int] = set()
    done: dict[int, Sample] = {}

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        body = {"id": ident, "object": "text_completion", "created": created, "model": model,
                "choices": choices, **extra}
        return b"data: " + json.dumps(body).encode() + b"\n\n"

    def part(index: int, text: str, new_entries: LogprobsJson | None,
             finish_reason: str | None) -> bytes:
        shown = new_entries if parsed.logprobs is not None else None
        if new_entries is not None:
            logprobs_sent[index] = logprobs_sent.get(index, 0) + len(new_entries["tokens"])
        return chunk([{"text": text, "index": index, "logprobs": shown,
                       "finish_reason": finish_reason}])

    def prompt(index: int, prompt_text: str | None) -> str:
        if not parsed.echo or index in echoed or prompt_text is None:
            return ""
        echoed.add(index)
        return prompt_text or ""

    for index, item in itertools.chain([first], rest):
        if isinstance(item, StreamPiece):  # a worker streams each entry once, with its text
            yield part(index, prompt(index, item.prompt_text) + item.text, item.logprobs,
                       None)
        elif isinstance(item, Failure):
            # OpenAI has no finish reason for a failed choice; fanout's is "error".
            yield chunk([{"text": "", "index": index, "logprobs": None,
                          "finish_reason": "error"}])
        else:  # the sample's end: it holds every entry; those not streamed go now
            done[index] = item
            rest_entries = None if item.logprobs is None else \
                _entries(item.logprobs, logprobs_sent.get(index, 0))
            yield part(index, prompt(index, item.prompt_text), rest_entries,
                       FINISH_REASONS.get(item.finish_reason, "stop"))
    if parsed.include_usage:
        yield chunk([], usage=_usage(parsed.request.per_prompt, done))
    yield b"data: [DONE]\n\n"


def _choices(parsed: CompletionRequest, prompt: int,
             by_index: Mapping[int, Sample]) -> list[dict[str, Any]]:
    """One prompt's choices, indexed ``prompt * n + i`` as OpenAI does; with ``best_of``,
    its ``n`` samples of highest total log-probability."""
    per = parsed.request.per_prompt
    samples = [by_index[i] for i in range(prompt * per, (prompt + 1) * per) if i in by_index]
    if parsed.best_of > parsed.n:
        samples = sorted(samples, key=lambda s: -math.inf if s.cumulative_logprob is None
                         else s.cumulative_logprob,
                         reverse=True)[:parsed.n]
        indexed = list(enumerate(samples, start=prompt * parsed.n))
    else:
        indexed = [(i, by_index[i]) for i in range(prompt * per, (prompt + 1) * per)
                   if i in by_index]
    return [{"text": (sample.prompt_text or "") + sample.text if parsed.echo
             else sample.text,
             "index": index,
             "logprobs": sample.logprobs if parsed.logprobs is not None else None,
             "finish_reason": FINISH_REASONS.get(sample.finish_reason, "stop")}
            for index, sample in indexed]


def _usage(per_prompt: int, samples: Mapping[int, Sample]) -> dict[str, int]:
    """Exact token counts: each prompt's once (as its workers fed it), and every sample
    generated, best_of's discarded ones included (they were generated)."""
    prompts: dict[int, int] = {}
    for index, sample in samples.items():
        prompts[index // per_prompt] = max(prompts.get(index // per_prompt, 0),
                                           sample.context_tokens)
    prompt_tokens = sum(prompts.values())
    completion_tokens = sum(sample.tokens for sample in samples.values())
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _entries(logprobs: LogprobsJson, start: int) -> LogprobsJson:
    """OpenAI's logprobs object from entry ``start`` on."""
    return {"tokens": logprobs["tokens"][start:],
            "token_logprobs": logprobs["token_logprobs"][start:],
            "top_logprobs": logprobs["top_logprobs"][start:],
            "text_offset": logprobs["text_offset"][start:]}


class Models:
    """``GET /v1/models`` (the pools, as OpenAI lists models) and ``GET /v1/models/{id}``."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        # aliases: an extension; each is accepted as model, and answered as its pool.
        self.models = {name: {"id": name, "object": "model", "created": CREATED,
                              "owned_by": "fanout", "aliases": list(pool.aliases)}
                       for name, pool in layout.pools.items()}
        self.body = {"object": "list", "data": list(self.models.values())}

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.body

    def on_get_model(self, req: falcon.Request, resp: falcon.Response, model_id: str) -> None:
        pool = self.layout.pool_named(model_id)
        if pool is None:
            raise FieldError(404, "Not found", f"the model {model_id!r} does not exist; "
                                               f"choose one of {', '.join(self.models)}",
                             "model")
        resp.media = self.models[pool.name]


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
