"""The front's OpenAPI 3.1 description, built once at start-up from the layout it serves.

Every limit, default and pool name comes from the loaded :class:`~fanout.layout.Layout`
and the bounds in :mod:`fanout.params`, so the document states the rules this server
applies rather than a hand-kept copy of them; ``GET /openapi.json`` serves it.
"""

from __future__ import annotations

import json
from typing import Any

import falcon

from fanout import params
from fanout.layout import ENGINES, Layout
from fanout.protocol import EXTRA_TOKENS, STOP_AT

OPENAPI_VERSION = "3.1.0"
JSON = "application/json"
BEARER = "bearerAuth"

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _optional(schema: Schema, default: Any) -> Schema:
    """A field a client may leave out or send as ``null``: both mean the default."""
    kind = schema["type"]
    described = {**schema, "type": [kind, "null"]}
    if default is not None:
        described["default"] = default
    return described


def _integer(low: int, high: int, default: int | None, about: str) -> Schema:
    return _optional({"type": "integer", "minimum": low, "maximum": high,
                      "description": about}, default)


def _number(low: float, high: float, default: float, about: str,
            low_open: bool = False) -> Schema:
    bound = {"exclusiveMinimum": low} if low_open else {"minimum": low}
    return _optional({"type": "number", **bound, "maximum": high, "description": about},
                     default)


def request_schema(layout: Layout) -> Schema:
    """``POST /autocomplete``'s body: the bounds ``parse_autocomplete`` checks
    (``frontend_api.resources``)."""
    defaults, limits = layout.defaults, layout.limits
    return {
        "type": "object",
        "required": ["context"],
        "additionalProperties": False,
        "properties": {
            # JSON Schema counts characters, the server bytes: maxLength is the loosest
            # bound that every accepted context meets; the description says the rule.
            "context": {"type": "string", "maxLength": limits.context_bytes,
                        "description": f"The text to continue: at most {limits.context_bytes} "
                                       "bytes of UTF-8 (413 past it). Cut from the front "
                                       "to fit the model's window."},
            "model_size": {"type": ["string", "null"], "enum": [*layout.names, None],
                           "default": layout.default_pool.name,
                           "description": "The pool that answers, by its name or an alias "
                                          "(see GET /models); 404 for a name that is none "
                                          "of them. Under /autocomplete/{model} it may "
                                          "only repeat the path's pool (400 otherwise)."},
            "n_samples": _integer(1, layout.front.max_samples, defaults.n_samples,
                                  "Completions to return, each from its own worker."),
            "length": _integer(1, limits.length, defaults.length,
                               "New tokens per completion; it must also stay below the "
                               "model's window (400 from the worker tier otherwise)."),
            "temperature": _number(0.0, params.MAX_TEMPERATURE, defaults.temperature,
                                   "Sampling temperature; 0 means greedy decoding."),
            "top_k": _integer(0, params.MAX_TOP_K, defaults.top_k,
                              "Sample from the k likeliest tokens; 0 disables top-k."),
            "top_p": _number(0.0, 1.0, defaults.top_p, "Nucleus sampling.", low_open=True),
            "max_time": _number(0.0, limits.max_time, defaults.max_time,
                                "Seconds; a completion stops early when they run out "
                                "(finish_reason 'time').", low_open=True),
            "max_tokens": _integer(1, params.MAX_CONTEXT_TOKENS, None,
                                   "Context tokens to feed at most (the end of the context "
                                   "is kept); default: as many as fit the window."),
            "seed": _integer(0, params.MAX_SEED, None,
                             "Sample i uses seed + i, so a request can be repeated; "
                             "default: random."),
            "min_tokens": _integer(0, limits.length, 0,
                                   "The end of text does not end a sample "
                                   "before this many tokens (at most length)."),
            "stop_at": {"type": ["string", "null"], "enum": [*STOP_AT, None],
                        "default": defaults.stop_at,
                        "description": "Where a completion may end: after a whole word, "
                                       "a sentence, a line or a paragraph (up to "
                                       f"{EXTRA_TOKENS} tokens past length to reach one, "
                                       "else cut back to the last one reached; tokens "
                                       "counts the tokens kept), or 'none': wherever "
                                       "length or max_time ends it."},
            "distinct": {"type": ["boolean", "null"], "default": False,
                         "description": "A completion that repeats another (whitespace "
                                        "trimmed and collapsed), one of exclude, or is "
                                        "empty is generated again with the next seed while "
                                        "max_time allows (see resampled)."},
            "exclude": {"type": ["array", "null"], "maxItems": params.MAX_EXCLUDE,
                        "items": {"type": "string", "maxLength": params.MAX_EXCLUDE_CHARS},
                        "description": "Texts that count as repeats, such as the "
                                       "suggestions shown last time; any turns distinct "
                                       "on."},
        },
    }


def event_schema(layout: Layout) -> Schema:
    """``POST /events``' body: the checks of ``frontend_api.events.parse_event``, one
    branch per event: shown carries n, accepted carries rank, dismissed neither."""
    top = layout.front.max_samples
    model_size = {"type": ["string", "null"], "enum": [*layout.names, None],
                  "default": layout.default_pool.name,
                  "description": "The pool (or alias) the list came from."}
    absent: Schema = {"type": "null", "description": "another event's field: leave it out"}
    own: dict[str, dict[str, Schema]] = {
        "shown": {"n": {"type": "integer", "minimum": 1, "maximum": top,
                        "description": "How many suggestions the list showed."},
                  "rank": absent},
        "accepted": {"rank": {"type": "integer", "minimum": 0, "maximum": top - 1,
                              "description": "The suggestion's 0-based place in the list "
                                             "as it was first shown."},
                     "n": absent},
        "dismissed": {"n": absent, "rank": absent},
    }
    about = {"shown": "A list of n suggestions was shown.",
             "accepted": "The writer took the suggestion at rank.",
             "dismissed": "The writer closed the list without taking one (Esc, typing on)."}
    return {"oneOf": [
        {"type": "object", "title": event, "description": about[event],
         "additionalProperties": False,
         "required": ["event", *(name for name, s in fields.items() if s is not absent)],
         "properties": {"event": {"type": "string", "const": event},
                        "model_size": model_size, **fields}}
        for event, fields in own.items()]}


def _schemas(layout: Layout) -> dict[str, Schema]:
    pools = list(layout.pools)
    integer, number, string = {"type": "integer"}, {"type": "number"}, {"type": "string"}
    return {
        "AutocompleteRequest": request_schema(layout),
        "ModelName": {"type": "string", "enum": list(layout.names),
                      "description": "A pool's name or one of its aliases."},
        "Event": event_schema(layout),
        "Worker": {"type": "object", "required": ["pid", "slot", "device", "pool"],
                   "properties": {"pid": integer, "slot": integer, "device": string,
                                  "pool": {"type": "string", "enum": pools}}},
        "Sentence": {
            "type": "object",
            "required": ["value", "time", "tokens", "finish_reason", "seed", "worker"],
            "properties": {
                "value": string, "time": {**number, "minimum": 0},
                "tokens": {**integer, "minimum": 0},
                "finish_reason": {"type": "string", "enum": ["length", "stop", "time"],
                                  "description": "length: all tokens (with stop_at, then "
                                                 "finished or cut back to a boundary); "
                                                 "stop: the model ended the text; time: "
                                                 "max_time ran out (cut back too)"},
                "seed": {"type": ["integer", "null"], "minimum": 0,
                         "maximum": params.MAX_SEED,
                         "description": "Replays this sample when sent back as seed; null "
                                        "where the engine cannot replay it (a ctranslate2 "
                                        "pool sampling without a requested seed)."},
                "worker": _ref("Worker"),
            },
        },
        "FailedSample": {"type": "object", "required": ["index", "status", "reason"],
                         "properties": {"index": {**integer, "minimum": 0},
                                        "status": {**integer, "minimum": 500, "maximum": 599,
                                                   "description": "502 or 504"},
                                        "reason": string}},
        "Autocompletion": {
            "type": "object",
            "required": ["sentences", "model_size", "time", "partial", "failed",
                         "resampled"],
            "properties": {
                "sentences": {"type": "array", "items": _ref("Sentence"),
                              "maxItems": layout.front.max_samples},
                "model_size": {"type": "string", "enum": pools},
                "time": {**number, "minimum": 0},
                "partial": {"type": "boolean",
                            "description": "true when some samples failed by the deadline"},
                "failed": {"type": "array", "items": _ref("FailedSample")},
                "resampled": {**integer, "minimum": 0,
                              "description": "Completions generated again for repeating "
                                             "another (distinct)"},
            },
        },
        "Models": {
            "type": "object", "required": ["default", "models"],
            "properties": {
                "default": {"type": "string", "enum": pools},
                "models": {"type": "array", "items": {
                    "type": "object",
                    "required": ["name", "model", "engine", "dtype", "workers", "devices"],
                    "properties": {"name": {"type": "string", "enum": pools}, "model": string,
                                   "engine": {"type": "string", "enum": list(ENGINES)},
                                   "dtype": {**string, "description": "the transformers "
                                             "dtype, or the CTranslate2 quantization"},
                                   "workers": {**integer, "minimum": 1},
                                   "hosts": {**integer, "minimum": 1},
                                   "devices": {"type": "array", "items": string},
                                   "aliases": {"type": "array", "items": string,
                                               "description": "other names for the pool, "
                                                              "accepted as model_size"}}}},
            },
        },
        "Health": {
            "type": "object", "required": ["status", "pools"],
            "properties": {
                "status": {"type": "string", "enum": ["ok", "degraded", "down"]},
                "pools": {"type": "object", "additionalProperties": {
                    "type": "object", "required": ["status"],
                    "properties": {"status": {"type": "string",
                                              "enum": ["ok", "degraded", "down"]},
                                   "ready_workers": integer, "workers": integer,
                                   "hosts": {"type": "array", "items": {
                                       "type": "object",
                                       "required": ["url", "status", "in_service"],
                                       "properties": {
                                           "url": string, "in_service": {"type": "boolean"},
                                           "status": {"type": "string",
                                                      "enum": ["ok", "degraded", "down"]},
                                           "ready_workers": integer, "workers": integer,
                                           "outstanding": integer}}}}}},
                "load": {"type": "object"},
            },
        },
        "Error": {
            "type": "object", "required": ["title", "description"],
            "properties": {"title": string, "description": string,
                           "field": {"type": "string",
                                     "description": "the request field at fault, when one is"}},
        },
    }


# Status -> when the front answers it: the README's error table, for POST /autocomplete.
_ERRORS = {
    "400": "Body not JSON, not UTF-8, empty or nested too deeply; a field of the wrong "
           "type, out of range, NaN/Infinity or unknown; length past the model's window.",
    "401": "API keys are configured and the request has none, or a wrong one.",
    "404": "model_size names no pool.",
    "413": "Body over front.max_body_bytes, or context over limits.context_bytes.",
    "415": "Content-Type is not application/json.",
    "429": "This API key is past its fair share of the pool, or this client address past "
           "the edge's connection or request-rate limit: retry after Retry-After seconds.",
    "502": "The pool's workers failed every sample.",
    "503": "The pool is down, or the front is at its bounds (front.max_inflight, "
           "front.max_queued_samples): retry after Retry-After seconds.",
    "504": "No sample arrived within max_time + front.network_slack.",
}


def _json(schema: Schema, description: str, **extra: Any) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}, **extra}


def _error(status: str) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if status in ("429", "503"):
        extra["headers"] = {"Retry-After": {"required": True, "description": "seconds",
                                            "schema": {"type": "integer", "minimum": 0}}}
    if status == "401":
        extra["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"},
                                                 "description": "the Bearer challenge"}}
    return _json(_ref("Error"), _ERRORS[status], **extra)


def _paths() -> dict[str, Any]:
    # Either scheme list entry satisfies OpenAPI: a key, or none while none is configured.
    keyed: list[dict[str, list[str]]] = [{BEARER: []}, {}]
    return {
        "/autocomplete": {"post": {
            "operationId": "autocomplete",
            "summary": "n_samples completions of context, generated in parallel",
            "security": keyed,
            "requestBody": {"required": True, "content": {
                JSON: {"schema": _ref("AutocompleteRequest")}}},
            "responses": {"200": _json(_ref("Autocompletion"), "The completions (partial "
                                       "when some samples failed by the deadline)."),
                          **{status: _error(status) for status in _ERRORS}},
        }},
        "/autocomplete/{model}": {"post": {
            "operationId": "autocompleteNamed",
            "summary": "POST /autocomplete with the pool in the path (Write With "
                       "Transformer's path, e.g. /autocomplete/gpt2/medium)",
            "security": keyed,
            "parameters": [{"name": "model", "in": "path", "required": True,
                            "schema": _ref("ModelName"),
                            "description": "A pool or an alias; an alias may hold '/', "
                                           "sent as it is."}],
            "requestBody": {"required": True, "content": {
                JSON: {"schema": _ref("AutocompleteRequest")}}},
            "responses": {"200": _json(_ref("Autocompletion"), "As POST /autocomplete."),
                          **{status: _error(status) for status in _ERRORS},
                          "404": _json(_ref("Error"), "The path or model_size names no "
                                                      "pool.")},
        }},
        "/events": {"post": {
            "operationId": "events",
            "summary": "What a writer did with suggestions: counted by pool and rank "
                       "(fanout_suggestions_* in GET /metrics)",
            "security": keyed,
            "requestBody": {"required": True, "content": {JSON: {"schema": _ref("Event")}}},
            "responses": {"204": {"description": "Counted."},
                          **{status: _error(status)
                             for status in ("400", "401", "404", "413", "415")}},
        }},
        "/models": {"get": {
            "operationId": "models", "summary": "The pools model_size may name",
            "security": keyed,
            "responses": {"200": _json(_ref("Models"), "The pools, in layout order."),
                          "401": _error("401")},
        }},
        "/health": {"get": {
            "operationId": "health", "summary": "The front and every pool", "security": [],
            "responses": {"200": _json(_ref("Health"), "Every pool can serve (ok, degraded)."),
                          "503": _json(_ref("Health"), "Some pool is down.")},
        }},
        "/openapi.json": {"get": {
            "operationId": "openapi", "summary": "This document", "security": [],
            "responses": {"200": _json({"type": "object"}, "The OpenAPI description.")},
        }},
        "/metrics": {"get": {
            "operationId": "metrics", "summary": "The front's Prometheus metrics",
            "description": "Open even when API keys are configured, as scrapers carry no "
                           "credentials; restrict it at a proxy if need be.",
            "security": [],
            "responses": {"200": {"description": "Prometheus' text exposition format.",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}}},
        }},
        "/": {"get": {
            "operationId": "editor", "summary": "The web editor", "security": [],
            "responses": {"200": {"description": "The editor page.",
                                  "content": {"text/html": {"schema": {"type": "string"}}}}},
        }},
    }


def build_document(layout: Layout) -> dict[str, Any]:
    """The OpenAPI document for a front serving ``layout``."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "fanout front API",
            "version": "1",
            "description": "N completions of a text from a pool of GPT-2 workers, in "
                           "parallel. Errors are JSON: {title, description, field?}, "
                           "field naming the request field at fault.",
        },
        "paths": _paths(),
        "components": {
            "schemas": _schemas(layout),
            "securitySchemes": {BEARER: {
                "type": "http", "scheme": "bearer",
                "description": "Needed only when the server has API keys configured "
                               "($FANOUT_API_KEYS or front.api_keys_file)."}},
        },
    }


class OpenAPIDocument:
    """``GET /openapi.json``: the document, serialised once; it cannot change while serving."""

    def __init__(self, layout: Layout) -> None:
        self.body = json.dumps(build_document(layout)).encode("utf-8")

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = JSON
        resp.data = self.body
