"""Who may call the front: optional API keys (Bearer) and the browser origins allowed (CORS).

Keys are read once at start-up, from ``$FANOUT_API_KEYS`` and the layout's
``front.api_keys_file``. With none configured the API is open, as it always was. The
editor page, its assets, ``/health``, ``/openapi.json`` and ``/metrics`` stay open either
way: the page must load before anyone can type a key into it, and health probes and
Prometheus scrapes carry no credentials (restrict ``/metrics`` at a proxy if need be).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import falcon

from fanout.layout import API_KEYS_ENV, Front

# Routes that never need a key; every other route (the API) does once keys are configured.
# The API's description is open too: it says how to authenticate, and holds no secret.
# So are the metrics: counts and timings by route, no request content.
OPEN_PATHS = frozenset({"/", "/health", "/openapi.json", "/metrics"})
OPEN_PREFIXES = ("/static/",)
# Visible ASCII: what an HTTP header (and a browser's fetch) carries unchanged.
_KEY = re.compile(r"[\x21-\x7e]+")

log = logging.getLogger(__name__)


class ApiKeyError(ValueError):
    """A key source that cannot be used; the message names the source, never the key."""


@dataclass(frozen=True)
class ApiKeys:
    """SHA-256 digests of the accepted keys, so every comparison is the same length."""

    digests: tuple[bytes, ...] = ()
    sources: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.digests)

    def accepts(self, key: str) -> bool:
        """Whether ``key`` is one of ours, in time that depends on neither key."""
        return self.identify(key) is not None

    def identify(self, key: str) -> int | None:
        """Which of ours ``key`` is (its index), or None; in time that depends on neither."""
        offered = _digest(key)
        matched = None
        for index, digest in enumerate(self.digests):  # no early exit: no timing tells which
            if hmac.compare_digest(offered, digest):
                matched = index
        return matched


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def read_api_keys(env_value: str | None, keys_file: Path | None) -> ApiKeys:
    """The keys from the environment variable's value (comma-separated) and the file.

    A file that names no key is an error rather than an open server: whoever configured
    it meant the API to be closed.
    """
    keys: list[str] = []
    sources: list[str] = []
    if env_value and env_value.strip():
        items = [item.strip() for item in env_value.split(",")]
        keys += _checked(((f"${API_KEYS_ENV} item {n}", item)
                          for n, item in enumerate(items, 1) if item))
        sources.append(f"${API_KEYS_ENV}")
    if keys_file is not None:
        from_file = _checked(_file_keys(keys_file))
        if not from_file:
            raise ApiKeyError(f"{keys_file}: names no API key (one key per line)")
        keys += from_file
        sources.append(str(keys_file))
    return ApiKeys(tuple(dict.fromkeys(_digest(key) for key in keys)), tuple(sources))


def _file_keys(path: Path) -> Iterable[tuple[str, str]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ApiKeyError(f"{path}: cannot be read ({exc})") from None
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if text and not text.startswith("#"):
            yield f"{path}:{number}", text


def _checked(keys: Iterable[tuple[str, str]]) -> list[str]:
    checked = []
    for where, key in keys:
        if not _KEY.fullmatch(key):
            raise ApiKeyError(f"{where}: an API key must be visible ASCII with no spaces "
                              "(a # comment needs a line of its own)")
        checked.append(key)
    return checked


class RequireApiKey:
    """Falcon middleware: API routes answer 401 unless ``Authorization: Bearer <key>``."""

    def __init__(self, keys: ApiKeys) -> None:
        self.keys = keys

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if self._open(req):
            return
        header = req.get_header("Authorization")
        if header is None:
            raise _unauthorized("this server needs an API key: send "
                                "'Authorization: Bearer <key>'", invalid=False)
        scheme, _, key = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise _unauthorized("the Authorization header must be 'Bearer <key>'")
        which = self.keys.identify(key.strip())
        if which is None:
            raise _unauthorized("the API key is not valid")
        req.context.api_key = which  # an index, never the key: admission's fair share

    @staticmethod
    def _open(req: falcon.Request) -> bool:
        # A CORS preflight carries no credentials by design; the CORS middleware answers it.
        preflight = req.method == "OPTIONS" and req.get_header("Access-Control-Request-Method")
        return bool(preflight) or req.path in OPEN_PATHS or req.path.startswith(OPEN_PREFIXES)


def _unauthorized(description: str, invalid: bool = True) -> falcon.HTTPUnauthorized:
    # RFC 6750: no error code when no credentials came, invalid_token when bad ones did.
    challenge = 'Bearer realm="fanout"' + (', error="invalid_token"' if invalid else "")
    return falcon.HTTPUnauthorized(title="Unauthorized", description=description,
                                   challenges=[challenge])


class _Cors(falcon.CORSMiddleware):
    """Falcon's CORS policy, plus ``Vary: Origin`` so that no cache hands one origin's
    answer (with its Access-Control-Allow-Origin) to another."""

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: object,
                         req_succeeded: bool) -> None:
        super().process_response(req, resp, resource, req_succeeded)
        if self.allow_origins != "*":
            resp.append_header("Vary", "Origin")


def access_middleware(cors_origins: tuple[str, ...],
                      keys: ApiKeys) -> list[falcon.CORSMiddleware | RequireApiKey]:
    """The front's middleware: CORS first, so that a 401 still reaches an allowed origin's
    script as a 401 rather than as an opaque network error."""
    middleware: list[falcon.CORSMiddleware | RequireApiKey] = []
    if cors_origins:
        origins: str | tuple[str, ...] = "*" if "*" in cors_origins else cors_origins
        middleware.append(_Cors(allow_origins=origins,
                                expose_headers=["Retry-After", "WWW-Authenticate",
                                               "X-Request-ID"]))
    if keys:
        middleware.append(RequireApiKey(keys))
    return middleware


def log_policy(front: Front, keys: ApiKeys) -> None:
    """Say once at start-up who may call the API: key count and sources, never a key."""
    if keys:
        log.info("%d API key(s) from %s: every API route needs 'Authorization: Bearer <key>'",
                 len(keys.digests), " and ".join(keys.sources))
    elif _loopback(front.bind.host):
        log.info("no API keys configured: the API is open to this host")
    else:
        log.warning("no API keys configured and the front binds %s: anyone who reaches it "
                    "can use the models (set $%s or front.api_keys_file)",
                    front.bind, API_KEYS_ENV)
    if front.cors_origins:
        log.info("CORS: browsers on %s may call the API", ", ".join(front.cors_origins))


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
