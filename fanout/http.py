"""HTTP plumbing both Falcon apps share: reading a JSON body safely, mapping errors."""

from __future__ import annotations

import json
import logging
from typing import Any

import falcon

from fanout.params import ParamError

log = logging.getLogger(__name__)

JSON_TYPE = "application/json"


def read_json(req: falcon.Request, max_bytes: int) -> Any:
    """The request's JSON body, or a 4xx that says what is wrong with it.

    Parsed here rather than by Falcon's media handler so that every way a body can be
    bad (too big, not UTF-8, too deeply nested) becomes a 4xx, never a 500.
    """
    media_type = (req.content_type or "").split(";", 1)[0].strip().lower()
    if media_type != JSON_TYPE:
        raise falcon.HTTPUnsupportedMediaType(
            description=f"send the body as {JSON_TYPE}, not {media_type or 'no content type'}")
    if req.content_length is not None and req.content_length > max_bytes:
        raise _too_large(max_bytes)
    raw = req.bounded_stream.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise _too_large(max_bytes)
    if not raw.strip():
        raise falcon.HTTPBadRequest(title="Empty body", description="send a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise falcon.HTTPBadRequest(
            title="Invalid body", description=f"body is not valid UTF-8 (byte {exc.start})"
        ) from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise falcon.HTTPBadRequest(
            title="Invalid JSON", description=f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise falcon.HTTPBadRequest(
            title="Invalid JSON", description="body is nested too deeply") from None


def _too_large(max_bytes: int) -> falcon.HTTPContentTooLarge:
    return falcon.HTTPContentTooLarge(description=f"body is larger than {max_bytes} bytes")


class FieldError(falcon.HTTPError):
    """An HTTP error about one request field; its JSON body carries ``field``."""

    def __init__(self, status: int, title: str, description: str, field: str) -> None:
        super().__init__(falcon.code_to_http_status(status), title=title,
                         description=description)
        self.field = field

    def to_dict(self, obj_type: Any = dict) -> Any:
        body = super().to_dict(obj_type)
        body["field"] = self.field
        return body


def param_error(req: falcon.Request, resp: falcon.Response, exc: ParamError,
                params: dict[str, Any]) -> None:
    """A bad field becomes a JSON error naming it, with the status the check chose."""
    titles = {404: "Unknown model", 413: "Content too large"}
    raise FieldError(exc.status, titles.get(exc.status, "Invalid parameter"), str(exc),
                     exc.field)


def unexpected_error(req: falcon.Request, resp: falcon.Response, exc: Exception,
                     params: dict[str, Any]) -> None:
    """Anything else is our bug: log it in full, answer JSON, and keep serving."""
    log.exception("unhandled error on %s %s", req.method, req.path)
    raise falcon.HTTPInternalServerError(
        description="the server hit an unexpected error; it has been logged")


def serialize_error(req: falcon.Request, resp: falcon.Response,
                    exc: falcon.HTTPError) -> None:
    """Every error as JSON, whatever the client's Accept asks (Falcon would send XML to
    some), and ASCII-escaped: no text a request brings can make an error unencodable."""
    resp.content_type = JSON_TYPE
    resp.data = json.dumps(exc.to_dict(), ensure_ascii=True).encode("ascii")


def add_error_handlers(app: falcon.App) -> None:
    app.add_error_handler(Exception, unexpected_error)
    app.add_error_handler(ParamError, param_error)
    app.set_error_serializer(serialize_error)
