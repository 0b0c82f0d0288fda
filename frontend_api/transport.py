"""How the front's requests reach one worker-tier host, and what a failure there means.

One HTTP session for every worker request of the front, over connections the fan-out
can cut: ``Cutter.cut_now`` shuts a sample's socket down from another thread, which
wakes the thread waiting on it and tells the worker (it sees EOF) to stop generating.

Every way a request can fail becomes one of ``frontend_api.errors``: a host that cannot
be reached (``HostUnreachable``), a worker that dropped the connection or answered 5xx
(``WorkerDropped``), or a ``WorkerTierError`` with the status the front should answer
(the worker's own 4xx passed on with its words, or a timeout). Which host to use, what
to send again and what to do with the samples is the fan-out's (``frontend_api.fanout``).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Generator, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection

from fanout.observe import REQUEST_ID_HEADER
from fanout.protocol import GenerationParams, StreamLine, WorkerCompletion, decode_line
from frontend_api.errors import HostUnreachable, WorkerDropped, WorkerTierError

CONNECT_TIMEOUT = 2.0
JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}
# A host's /health and the TCP check of it: a host slower than this is taken as down.
HEALTH_TIMEOUT = 1.0
# A worker answers /tokenize between generations: it may first finish the longest one.
ASK_TIMEOUT = 30.0


class Cutter:
    """Lets the thread gathering a request cut one sample's connection to its worker."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sock: socket.socket | None = None
        self.cut = False

    def attach(self, sock: socket.socket) -> None:
        with self.lock:
            self.sock = sock
            if self.cut:
                _shutdown(sock)

    def detach(self) -> None:
        with self.lock:
            self.sock = None

    def cut_now(self) -> None:
        with self.lock:
            self.cut = True
            if self.sock is not None:
                _shutdown(self.sock)


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed
        sock.shutdown(socket.SHUT_RDWR)  # the blocked reader wakes; the worker sees EOF


_sending = threading.local()  # the Cutter of the sample this fan-out thread is sending


class _CuttableConnection(HTTPConnection):
    """Hands its socket to the sending thread's cutter once the request is on the wire."""

    def request(self, *args: Any, **kwargs: Any) -> None:
        super().request(*args, **kwargs)
        cutter: Cutter | None = getattr(_sending, "cutter", None)
        if cutter is not None and self.sock is not None:
            cutter.attach(self.sock)


class _CuttablePool(urllib3.HTTPConnectionPool):
    ConnectionCls = _CuttableConnection


class _CuttableAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            **self.poolmanager.pool_classes_by_scheme, "http": _CuttablePool}


@dataclass(frozen=True)
class HostHealth:
    """What a host's ``GET /health`` said: its status, and how many workers are ready."""

    status: int
    ready_workers: int


def worker_session() -> requests.Session:
    """A session for our own worker tiers, reached directly: an HTTP(S)_PROXY or .netrc
    meant for the host's outbound traffic must not apply to them, and skipping those
    look-ups (done on every request otherwise) takes a share of the front's per-sample
    overhead."""
    session = requests.Session()
    session.trust_env = False
    return session


def probe_health(session: requests.Session, url: str) -> HostHealth | None:
    """The one ``/health`` probe of a host, within HEALTH_TIMEOUT; None when it cannot be
    asked. A worker answers 200 once its model is ready, and counts its ready siblings."""
    try:
        response = session.get(f"{url}/health", timeout=(HEALTH_TIMEOUT, HEALTH_TIMEOUT))
    except requests.RequestException:
        return None
    body = _json_or_none(response)
    ready = len(body.get("ready_slots", {})) if isinstance(body, dict) else 0
    return HostHealth(response.status_code, ready)


def connection_failure(url: str) -> str | None:
    """Why a TCP connection to the host's server fails, or None when it opens."""
    address = urlsplit(url)
    try:
        with socket.create_connection((address.hostname, address.port),
                                      timeout=HEALTH_TIMEOUT):
            return None
    except TimeoutError:
        return "did not accept a connection in time"
    except ConnectionRefusedError:
        return "refused the connection"
    except OSError as error:
        return f"could not be connected to ({error.strerror or error})"


class WorkerTransport:
    """The front's HTTP session to its worker tiers: one request to one host at a time.

    ``pool`` in each call names the pool the host serves, for the error messages.
    """

    def __init__(self, urls: Iterable[str], connections_per_host: int) -> None:
        urls = list(urls)
        self.session = worker_session()
        self.adapter = _CuttableAdapter(pool_connections=len(urls),
                                        pool_maxsize=connections_per_host, max_retries=0)
        self.session.mount("http://", self.adapter)
        # Each sample's request is a copy of its host's, prepared once, plus a body.
        self.generate_requests = {
            url: requests.Request("POST", f"{url}/generate", headers=JSON_HEADERS).prepare()
            for url in urls}
        self.stream_requests = {
            url: requests.Request("POST", f"{url}/generate/stream",
                                  headers=JSON_HEADERS).prepare()
            for url in urls}

    def generate(self, pool: str, url: str, params: GenerationParams, deadline: float,
                 cutter: Cutter, request_id: str | None) -> WorkerCompletion:
        """``POST /generate`` to the host at ``url``; ``cutter`` can cut it off."""
        _sending.cutter = cutter
        try:
            prepared = self._prepared(self.generate_requests[url], params, request_id)
            response = self.adapter.send(prepared, timeout=(
                CONNECT_TIMEOUT, max(0.1, deadline - time.monotonic())))
        except requests.RequestException as exc:
            raise _failed(pool, exc, f"pool {pool!r} did not answer in time") from None
        finally:
            cutter.detach()
            _sending.cutter = None
        body = _json_or_none(response)
        if response.status_code != 200 or not isinstance(body, dict):
            raise upstream_error(pool, response.status_code, body)
        try:
            return WorkerCompletion.from_json(body)
        except KeyError as missing:
            raise WorkerTierError(502, "Worker tier error",
                                  f"pool {pool!r} answered without {missing}") from None

    def stream(self, pool: str, url: str, params: GenerationParams, deadline: float,
               cutter: Cutter, request_id: str | None) -> Generator[StreamLine, None, None]:
        """``POST /generate/stream``: the lines as the worker sends them, the last one its
        completion. Raises HostUnreachable only before the first line."""
        _sending.cutter = cutter
        try:
            prepared = self._prepared(self.stream_requests[url], params, request_id)
            with self.adapter.send(prepared, stream=True, timeout=(
                    CONNECT_TIMEOUT, max(0.1, deadline - time.monotonic()))) as response:
                if response.status_code != 200:
                    raise upstream_error(pool, response.status_code, _json_or_none(response))
                for line in response.iter_lines():
                    item = decode_line(line)
                    if item is not None:
                        yield item
                    if isinstance(item, WorkerCompletion):
                        return
            raise WorkerTierError(502, "Worker tier error", f"pool {pool!r}: a worker's "
                                                            "stream ended before its sample did")
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise _failed(pool, exc, "no answer before the deadline") from None
        except (requests.RequestException, ValueError, KeyError, TypeError) as exc:
            raise WorkerTierError(502, "Worker tier error",
                                  f"pool {pool!r}: bad stream ({exc})") from None
        finally:
            cutter.detach()
            _sending.cutter = None

    def ask(self, pool: str, url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """One small JSON request (``/tokenize``, ``/detokenize``); its 4xx comes back as
        the client's error, naming the worker's field."""
        try:
            response = self.session.post(f"{url}{path}", json=body,
                                         timeout=(CONNECT_TIMEOUT, ASK_TIMEOUT))
        except requests.RequestException as exc:
            failure = _failed(pool, exc, "")
            if isinstance(failure, HostUnreachable):
                raise failure from None
            raise WorkerTierError(502, "Worker tier error",
                                  f"pool {pool!r}: {_innermost(exc)}") from None
        answer = _json_or_none(response)
        if response.status_code == 200 and isinstance(answer, dict):
            return answer
        error = upstream_error(pool, response.status_code, answer)
        if isinstance(error, WorkerTierError):
            raise error
        raise WorkerTierError(502, "Worker tier error", str(error))

    def health(self, url: str) -> HostHealth | None:
        return probe_health(self.session, url)

    def close(self) -> None:
        self.session.close()

    @staticmethod
    def _prepared(template: requests.PreparedRequest, params: GenerationParams,
                  request_id: str | None) -> requests.PreparedRequest:
        # Sent straight to the adapter: what Session.request adds (merging session and
        # environment settings, cookies, redirects, hooks) has no use against our own
        # worker tier and cost a third of the front's time per sample.
        prepared = template.copy()
        if request_id is not None:  # the worker logs it: one id across both tiers
            prepared.headers[REQUEST_ID_HEADER] = request_id
        prepared.prepare_body(data=json.dumps(params.to_json()).encode(), files=None)
        return prepared


def upstream_error(pool: str, status: int, body: Any) -> Exception:
    """What a worker's answer other than 200 means, given its JSON body (or None)."""
    description = body.get("description") if isinstance(body, dict) else None
    if 400 <= status < 500 and status != 404 and isinstance(body, dict):
        # The worker rejected the parameters (e.g. a length past the model's window):
        # that is the client's error, reported with the worker's words.
        return WorkerTierError(status, body.get("title") or "Invalid parameter",
                               description or "rejected by the worker tier", body.get("field"))
    if status >= 500:
        # An unexpected error in one worker (out of memory, say): another may manage.
        return WorkerDropped(f"pool {pool!r}: a worker answered {status}"
                             + (f" ({description})" if description else ""))
    return WorkerTierError(502, "Worker tier error",
                           f"pool {pool!r} answered {status}"
                           + (f": {description}" if description else ""))


def _failed(pool: str, exc: requests.RequestException, timed_out: str) -> Exception:
    """What a request that failed on the wire means: a host not reached (try the next),
    a worker gone mid-request (send again), or the worker tier's error (``timed_out``
    describes a read that ran past its deadline)."""
    if isinstance(exc, requests.ConnectTimeout):
        return HostUnreachable("did not accept a connection in time")
    if isinstance(exc, requests.Timeout):
        return WorkerTierError(504, "Worker tier timed out", timed_out)
    if isinstance(exc, requests.ConnectionError):
        if _refused(exc):
            return HostUnreachable(_refusal(exc))
        return WorkerDropped(f"pool {pool!r}: a worker dropped the connection "
                             f"({_innermost(exc)})")
    return WorkerTierError(502, "Worker tier error", f"pool {pool!r}: {_innermost(exc)}")


def _refusal(exc: requests.ConnectionError) -> str:
    """How a connection failed to open, in a few words."""
    text = _innermost(exc)
    for errno_text, words in (("Connection refused", "refused the connection"),
                              ("unreachable", "is unreachable"),
                              ("Name or service not known", "is not a known host name"),
                              ("Temporary failure in name resolution",
                               "could not be resolved")):
        if errno_text in text:
            return words
    return f"could not be connected to ({text})"


def _refused(exc: requests.ConnectionError) -> bool:
    """A connection never made (nothing listens) rather than one broken mid-request."""
    reason = exc.args[0] if exc.args else None
    reason = getattr(reason, "reason", reason)  # MaxRetryError wraps the cause
    return isinstance(reason, urllib3.exceptions.NewConnectionError)


def _innermost(exc: BaseException) -> str:
    reason: Any = exc
    while isinstance(getattr(reason, "args", None), tuple) and reason.args \
            and isinstance(reason.args[0], BaseException):
        reason = reason.args[0]
    reason = getattr(reason, "reason", reason)
    return f"{type(reason).__name__}: {reason}" if isinstance(reason, BaseException) \
        else str(reason)


def _json_or_none(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
