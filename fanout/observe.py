"""What both tiers do around every request: a request id, a route label, one JSON log line.

``RequestObserver`` is a Falcon middleware; each tier subclasses it to record its metrics
and add its own fields to the line. The request id is the client's ``X-Request-ID`` when
it is well-formed, else a new one; it is logged, sent back in the same header, and the
front passes it on to the workers, so one id ties a request's lines on every tier.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Any

import falcon
from falcon.routing import CompiledRouter

from fanout.logs import REQUESTS_LOGGER

REQUEST_ID_HEADER = "X-Request-ID"
# Short and plain, so that an id a client chose goes into logs and headers as it is.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
UNMATCHED = "unmatched"  # the route label of a path no route serves (a 404)
_METHODS = frozenset(falcon.COMBINED_METHODS)

request_log = logging.getLogger(REQUESTS_LOGGER)


def request_id(offered: str | None) -> str:
    """``offered`` if it is 1-64 characters of ``A-Za-z0-9._-``, else a new uuid4 hex."""
    if offered is not None and _REQUEST_ID.fullmatch(offered):
        return offered
    return uuid.uuid4().hex


def method_label(method: str) -> str:
    """The method as a metric label: any token is a valid HTTP method, labels must be few."""
    return method if method in _METHODS else "OTHER"


@dataclass
class RequestRecord:
    """One request as its log line will tell it; code the request calls may add fields."""

    request_id: str
    started: float = field(default_factory=time.perf_counter)
    fields: dict[str, Any] = field(default_factory=dict)


# The request this thread is serving. The front's fan-out client is handed no
# falcon.Request, yet sends the id on and knows the pool and the outcome; a request runs
# in one thread from process_request to process_response, so the context carries it.
_current: ContextVar[RequestRecord | None] = ContextVar("fanout_request", default=None)


def current_request_id() -> str | None:
    record = _current.get()
    return record.request_id if record is not None else None


def note(**fields: Any) -> None:
    """Add fields to the log line of the request being served (nothing outside one)."""
    record = _current.get()
    if record is not None:
        record.fields.update(fields)


class RequestObserver:
    """Times each request, carries its id, and logs it. Put it first in the middleware, so
    that it also sees the requests another middleware refuses (a 401, a CORS preflight)."""

    def __init__(self, router: CompiledRouter, static_prefixes: tuple[str, ...] = ()) -> None:
        # The app's own router: a request refused before routing still gets its route.
        self.router, self.static_prefixes = router, static_prefixes

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        record = RequestRecord(request_id(req.get_header(REQUEST_ID_HEADER)))
        req.context.fanout_record = record
        req.context.fanout_token = _current.set(record)
        self.started(req)

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: object,
                         req_succeeded: bool) -> None:
        record: RequestRecord | None = getattr(req.context, "fanout_record", None)
        if record is None:  # Falcon refused the request before any middleware ran
            record = RequestRecord(request_id(req.get_header(REQUEST_ID_HEADER)))
            self.started(req)
        token: Token[RequestRecord | None] | None = getattr(req.context, "fanout_token", None)
        if token is not None:
            _current.reset(token)  # the thread serves other requests next
        seconds = time.perf_counter() - record.started
        route, status = self.route(req), resp.status_code
        resp.set_header(REQUEST_ID_HEADER, record.request_id)
        self.finished(req, resp, route, seconds, record)
        request_log.info("%s %s %d", req.method, req.path, status, extra={"fields": {
            "method": req.method, "route": route, "path": req.path, "status": status,
            "duration_ms": round(seconds * 1000, 2), "request_id": record.request_id,
            **record.fields}})

    def route(self, req: falcon.Request) -> str:
        """The route template, never the raw path: a label per path would let any client
        grow the metrics without bound."""
        if req.uri_template is not None:
            return req.uri_template
        found = self.router.find(req.path)
        if found is not None and found[3] is not None:
            return found[3]
        prefix = next((p for p in self.static_prefixes if req.path.startswith(p)), None)
        return f"{prefix}*" if prefix is not None else UNMATCHED

    # What a tier adds: its metrics, and fields on ``record`` for the log line.
    def started(self, req: falcon.Request) -> None:
        pass

    def finished(self, req: falcon.Request, resp: falcon.Response, route: str, seconds: float,
                 record: RequestRecord) -> None:
        pass
