"""Send one request's N samples to a pool's worker tier in parallel and gather them.

This is the one place the front talks to workers. Each sample is its own HTTP request
from its own thread; the worker tier's sync workers take one request each, so N idle
workers generate the N samples at the same time. All N share one deadline.

Faults, sample by sample: a worker that dies mid-generation drops its connection, and
the sample is sent again (another worker, or the respawned one, takes it) while the
deadline allows. A worker that hangs costs only its own sample: at the deadline the
request answers with the samples it has (``partial``). A pool may run on several hosts
(frontend_api.hosts): each sample goes to the one with the fewest outstanding, and a
host that refuses or cannot be reached is skipped for the next. A pool none of whose
hosts can be reached is down: the request fails at once with 503 and Retry-After.
Samples still out when the request ends (deadline, or the client went away) have their
connections cut, which tells their workers to stop generating.
"""

from __future__ import annotations

import concurrent.futures as futures
import contextlib
import json
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection

from fanout.layout import Pool
from fanout.observe import REQUEST_ID_HEADER, current_request_id, note
from fanout.params import AutocompleteRequest
from fanout.protocol import GenerationParams, StreamPiece, WorkerCompletion, decode_line
from frontend_api.hosts import Host, HostSet, HostWatcher
from frontend_api.metrics import SAMPLE_FAILURES, SAMPLE_RETRIES, SAMPLES

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 2.0
JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}
HEALTH_TIMEOUT = 1.0
# How often a waiting request looks at its client's connection.
POLL_SECONDS = 0.05
# A sample whose worker died is sent again at most this often, and only with this much
# of the deadline left: less than that cannot produce a useful sample.
MAX_RETRIES = 2
RETRY_MIN_SECONDS = 0.2
# A worker answers /tokenize between generations: it may first finish the longest one.
ASK_TIMEOUT = 30.0
# A refused connection means the pool's server is down; it is back in a few seconds
# when a supervisor restarts it, minutes if it must reload its model.
POOL_DOWN_RETRY_AFTER = 5


class WorkerTierError(Exception):
    """A pool's worker tier failed a request; carries the status the front should answer."""

    def __init__(self, status: int, title: str, description: str, field: str | None = None,
                 retry_after: int | None = None) -> None:
        super().__init__(description)
        self.status, self.title, self.description = status, title, description
        self.field, self.retry_after = field, retry_after

    @property
    def ends_request(self) -> bool:
        """Fails the whole request, not one sample: every sample would fail alike."""
        return 400 <= self.status < 500 or self.status == 503


class ClientGone(Exception):
    """The client closed its connection before its samples were in."""


class _WorkerDropped(Exception):
    """The worker's connection broke mid-request (the worker died): worth sending again."""


class _Unreachable(Exception):
    """No connection to a host (refused, unreachable, timed out): try the pool's next."""


_Result = TypeVar("_Result")


@dataclass(frozen=True, kw_only=True)
class Sample(WorkerCompletion):
    """One completion as a worker returned it, plus the round trip seen by the front."""

    round_trip: float

    @staticmethod
    def arrived(completion: WorkerCompletion, round_trip: float, host: str) -> Sample:
        # The worker knows its pid and slot, not the address the front reached it on.
        return Sample(**{**vars(completion), "worker": {**completion.worker, "host": host}},
                      round_trip=round_trip)


@dataclass(frozen=True)
class Failure:
    """A sample that did not arrive: its index in the request, a status and why."""

    index: int
    status: int
    reason: str


# One event of a streamed request: a sample's next text, its end, or its failure.
StreamEvent = tuple[int, StreamPiece | Sample | Failure]


@dataclass(frozen=True)
class Gathered:
    """What a request got by its deadline: the samples in order, and the ones that failed."""

    samples: list[Sample]
    failed: list[Failure]


class _Cutter:
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


_sending = threading.local()  # the _Cutter of the sample this fan-out thread is sending


class _CuttableConnection(HTTPConnection):
    """Hands its socket to the sending thread's cutter once the request is on the wire."""

    def request(self, *args: Any, **kwargs: Any) -> None:
        super().request(*args, **kwargs)
        cutter: _Cutter | None = getattr(_sending, "cutter", None)
        if cutter is not None and self.sock is not None:
            cutter.attach(self.sock)


class _CuttablePool(urllib3.HTTPConnectionPool):
    ConnectionCls = _CuttableConnection


class _CuttableAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            **self.poolmanager.pool_classes_by_scheme, "http": _CuttablePool}


def _never() -> bool:
    return False


class FanoutClient:
    """Holds the thread pool and HTTP session shared by every request of the front."""

    def __init__(self, pools: Mapping[str, Pool], threads: int, network_slack: float,
                 host_check_seconds: float = 2.0) -> None:
        self.pools = pools
        self.network_slack = network_slack
        self.hosts = {name: HostSet(name, pool.urls) for name, pool in pools.items()}
        urls = [url for pool in pools.values() for url in pool.urls]
        self.executor = futures.ThreadPoolExecutor(max_workers=threads,
                                                   thread_name_prefix="fanout")
        self.session = requests.Session()
        # Worker tiers are ours, reached directly: an HTTP(S)_PROXY or .netrc meant for the
        # host's outbound traffic must not apply to them, and skipping those look-ups (done
        # on every request otherwise) takes a share of the front's per-sample overhead.
        self.session.trust_env = False
        self.adapter = _CuttableAdapter(pool_connections=len(urls), pool_maxsize=threads,
                                        max_retries=0)
        self.session.mount("http://", self.adapter)
        # Each sample's request is a copy of its host's, prepared once, plus a body.
        self.generate_requests = {
            url: requests.Request("POST", f"{url}/generate", headers=JSON_HEADERS).prepare()
            for url in urls}
        self.stream_requests = {
            url: requests.Request("POST", f"{url}/generate/stream",
                                  headers=JSON_HEADERS).prepare()
            for url in urls}
        self.watcher = HostWatcher(self.hosts, host_check_seconds)

    def complete(self, request: AutocompleteRequest,
                 client_gone: Callable[[], bool] = _never) -> Gathered:
        """The samples that arrive by the deadline, or a WorkerTierError if none can.

        Raises ClientGone when ``client_gone`` says the requester left; the samples still
        out are then cut off, so an abandoned request leaves no work behind.
        """
        pool = self.pools[request.model_size]
        deadline = time.monotonic() + request.params.max_time + self.network_slack
        cutters = [_Cutter() for _ in range(request.n_samples)]
        # Read here: the fan-out threads that send the samples serve no request of their own.
        request_id = current_request_id()
        SAMPLES.labels(pool.name).observe(request.n_samples)
        pending = {self.executor.submit(self._sample, pool, params, deadline, cutters[i],
                                        request_id): i
                   for i, params in enumerate(request.sample_params())}
        samples: dict[int, Sample] = {}
        failed: dict[int, Failure] = {}
        waiting = set(pending)
        try:
            while waiting and (remaining := deadline - time.monotonic()) > 0:
                done, waiting = futures.wait(waiting, timeout=min(POLL_SECONDS, remaining),
                                             return_when=futures.FIRST_COMPLETED)
                for future in done:
                    index, error = pending[future], future.exception()
                    if error is None:
                        samples[index] = future.result()
                    elif isinstance(error, WorkerTierError) and error.ends_request:
                        raise error
                    else:
                        failed[index] = _failure(index, error)
                if waiting and client_gone():
                    raise ClientGone()
        finally:
            for future in waiting:
                future.cancel()  # not yet sent: never will be
                cutters[pending[future]].cut_now()  # sent: its worker stops generating
        for future in waiting:
            failed[pending[future]] = Failure(pending[future], 504,
                                              "no answer before the deadline")
        for failure in failed.values():
            SAMPLE_FAILURES.labels(pool.name, str(failure.status)).inc()
        if not samples:
            raise _all_failed(pool, sorted(failed.values(), key=lambda f: f.index))
        if failed:
            log.warning("pool %s: %d of %d samples failed: %s", pool.name, len(failed),
                        len(pending), "; ".join(f.reason for f in failed.values()))
        note(partial=bool(failed))
        return Gathered([samples[i] for i in sorted(samples)],
                        [failed[i] for i in sorted(failed)])

    def _sample(self, pool: Pool, params: GenerationParams, deadline: float,
                cutter: _Cutter, request_id: str | None = None) -> Sample:
        """One sample, sent again if its worker dies while the deadline allows."""
        for attempt in range(MAX_RETRIES + 1):
            try:
                return self._generate(pool, params, deadline, cutter, request_id)
            except _WorkerDropped as dropped:
                left = deadline - time.monotonic()
                if cutter.cut or attempt == MAX_RETRIES or left < RETRY_MIN_SECONDS:
                    raise WorkerTierError(502, "Worker tier error", str(dropped)) from None
                log.warning("%s; sending the sample again (%.1fs left)", dropped, left)
                SAMPLE_RETRIES.labels(pool.name).inc()
                # The retry has less time: it should end with a shorter sample, not none.
                params = replace(params, max_time=max(0.01, min(params.max_time,
                                                                left - RETRY_MIN_SECONDS)))
        raise AssertionError("unreachable")

    def _on_some_host(self, pool: Pool, send: Callable[[Host], _Result]) -> _Result:
        """``send`` to the pool's best host, and on to the next while hosts are unreachable;
        503 (pool down) when none can be reached."""
        host_set = self.hosts[pool.name]
        unreachable: dict[str, str] = {}
        while (host := host_set.choose(set(unreachable))) is not None:
            try:
                with host_set.sending(host):
                    result = send(host)
                if not host.in_service:  # tried while out, and it answered: it is back
                    host_set.bring_back(host)
                return result
            except _Unreachable as exc:
                host_set.take_out(host, str(exc))
                unreachable[host.url] = str(exc)
        raise _pool_down(pool, unreachable)

    def _prepared(self, requests_by_url: dict[str, requests.PreparedRequest], host: Host,
                  params: GenerationParams, request_id: str | None) -> requests.PreparedRequest:
        # Sent straight to the adapter: what Session.request adds (merging session and
        # environment settings, cookies, redirects, hooks) has no use against our own
        # worker tier and cost a third of the front's time per sample.
        prepared = requests_by_url[host.url].copy()
        if request_id is not None:  # the worker logs it: one id across both tiers
            prepared.headers[REQUEST_ID_HEADER] = request_id
        prepared.prepare_body(data=json.dumps(params.to_json()).encode(), files=None)
        return prepared

    def _generate(self, pool: Pool, params: GenerationParams, deadline: float,
                  cutter: _Cutter, request_id: str | None) -> Sample:
        return self._on_some_host(pool, lambda host: self._generate_on(
            host, pool, params, deadline, cutter, request_id))

    def _generate_on(self, host: Host, pool: Pool, params: GenerationParams, deadline: float,
                     cutter: _Cutter, request_id: str | None) -> Sample:
        started = time.monotonic()
        _sending.cutter = cutter
        try:
            prepared = self._prepared(self.generate_requests, host, params, request_id)
            response = self.adapter.send(prepared,
                                         timeout=(CONNECT_TIMEOUT, max(0.1, deadline - started)))
        except requests.ConnectTimeout:
            raise _Unreachable("did not accept a connection in time") from None
        except requests.Timeout:
            raise WorkerTierError(504, "Worker tier timed out",
                                  f"pool {pool.name!r} did not answer in time") from None
        except requests.ConnectionError as exc:
            if _refused(exc):
                raise _Unreachable(_refusal(exc)) from None
            raise _WorkerDropped(f"pool {pool.name!r}: a worker dropped the connection "
                                 f"({_innermost(exc)})") from None
        except requests.RequestException as exc:
            raise WorkerTierError(502, "Worker tier error",
                                  f"pool {pool.name!r}: {_innermost(exc)}") from None
        finally:
            cutter.detach()
            _sending.cutter = None
        body = _json_or_none(response)
        if response.status_code != 200 or not isinstance(body, dict):
            raise _upstream_error(pool, response.status_code, body)
        try:
            completion = WorkerCompletion.from_json(body)
        except KeyError as missing:
            raise WorkerTierError(502, "Worker tier error",
                                  f"pool {pool.name!r} answered without {missing}") from None
        return Sample.arrived(completion, time.monotonic() - started, host.url)

    def stream(self, request: AutocompleteRequest) -> Generator[StreamEvent, None, None]:
        """Every sample's text as its worker generates it, in arrival order: ``(index,
        StreamPiece)`` pieces, then ``(index, Sample)`` or ``(index, Failure)`` for each sample.

        Samples still out at the deadline end as 504 failures; closing the iterator early
        (the client left) cuts their connections, so their workers stop. A sample whose
        worker dies mid-stream is not sent again: its text so far has been shown.
        """
        pool = self.pools[request.model_size]
        deadline = time.monotonic() + request.params.max_time + self.network_slack
        events: queue.Queue[StreamEvent] = queue.Queue()
        cutters = [_Cutter() for _ in range(request.n_samples)]
        # Read before the first yield, while the request that asked for the stream is served.
        request_id = current_request_id()
        SAMPLES.labels(pool.name).observe(request.n_samples)
        sent = [self.executor.submit(self._stream_sample, pool, params, index, deadline,
                                     cutters[index], events.put, request_id)
                for index, params in enumerate(request.sample_params())]
        open_samples = set(range(request.n_samples))
        try:
            while open_samples and (remaining := deadline - time.monotonic()) > 0:
                try:
                    index, item = events.get(timeout=remaining)
                except queue.Empty:
                    break
                if not isinstance(item, StreamPiece):
                    open_samples.discard(index)
                if isinstance(item, Failure) and item.status in (502, 504):
                    # as in complete(): a refusal (4xx) or a pool down (503) is the request's
                    SAMPLE_FAILURES.labels(pool.name, str(item.status)).inc()
                yield index, item
        finally:
            for future in sent:
                future.cancel()
            for index in open_samples:
                cutters[index].cut_now()
        for index in sorted(open_samples):
            SAMPLE_FAILURES.labels(pool.name, "504").inc()
            yield index, Failure(index, 504, "no answer before the deadline")

    def _stream_sample(self, pool: Pool, params: GenerationParams, index: int,
                       deadline: float, cutter: _Cutter, put: Callable[[StreamEvent], None],
                       request_id: str | None = None) -> None:
        try:
            self._on_some_host(pool, lambda host: self._stream_on(
                host, pool, params, index, deadline, cutter, put, request_id))
        except WorkerTierError as down:
            put((index, _failure(index, down)))

    def _stream_on(self, host: Host, pool: Pool, params: GenerationParams, index: int,
                   deadline: float, cutter: _Cutter, put: Callable[[StreamEvent], None],
                   request_id: str | None) -> None:
        """One sample streamed from ``host``; raises _Unreachable only before any event."""
        started = time.monotonic()
        _sending.cutter = cutter
        try:
            prepared = self._prepared(self.stream_requests, host, params, request_id)
            with self.adapter.send(prepared, stream=True, timeout=(
                    CONNECT_TIMEOUT, max(0.1, deadline - started))) as response:
                if response.status_code != 200:
                    error = _upstream_error(pool, response.status_code,
                                            _json_or_none(response))
                    put((index, _failure(index, error)))
                    return
                for line in response.iter_lines():
                    item = decode_line(line)
                    if isinstance(item, WorkerCompletion):
                        put((index, Sample.arrived(item, time.monotonic() - started,
                                                   host.url)))
                        return
                    if item is not None:
                        put((index, item))
            put((index, Failure(index, 502, f"pool {pool.name!r}: a worker's stream ended "
                                            "before its sample did")))
        except requests.ConnectTimeout:
            raise _Unreachable("did not accept a connection in time") from None
        except requests.Timeout:
            put((index, Failure(index, 504, "no answer before the deadline")))
        except requests.ConnectionError as exc:
            if _refused(exc):
                raise _Unreachable(_refusal(exc)) from None
            put((index, _failure(index, _WorkerDropped(
                f"pool {pool.name!r}: a worker dropped the connection ({_innermost(exc)})"))))
        except (requests.RequestException, ValueError, KeyError, TypeError) as exc:
            put((index, Failure(index, 502, f"pool {pool.name!r}: bad stream ({exc})")))
        finally:
            cutter.detach()
            _sending.cutter = None

    def ask(self, pool_name: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """One small JSON request (``/tokenize``, ``/detokenize``) to one of the pool's
        workers; its 4xx comes back as the client's error, naming the worker's field."""
        pool = self.pools[pool_name]

        def send(host: Host) -> dict[str, Any]:
            try:
                response = self.session.post(f"{host.url}{path}", json=body,
                                             timeout=(CONNECT_TIMEOUT, ASK_TIMEOUT))
            except requests.ConnectTimeout:
                raise _Unreachable("did not accept a connection in time") from None
            except requests.ConnectionError as exc:
                if _refused(exc):
                    raise _Unreachable(_refusal(exc)) from None
                raise WorkerTierError(502, "Worker tier error",
                                      f"pool {pool.name!r}: {_innermost(exc)}") from None
            except requests.RequestException as exc:
                raise WorkerTierError(502, "Worker tier error",
                                      f"pool {pool.name!r}: {_innermost(exc)}") from None
            answer = _json_or_none(response)
            if response.status_code == 200 and isinstance(answer, dict):
                return answer
            error = _upstream_error(pool, response.status_code, answer)
            if isinstance(error, WorkerTierError):
                raise error
            raise WorkerTierError(502, "Worker tier error", str(error))

        return self._on_some_host(pool, send)

    def host_health(self, pool: Pool, host: Host) -> dict[str, Any]:
        """One host's state as its worker tier reports it; ``down`` when it cannot be asked.
        A host out of service that answers with ready workers is back in service."""
        workers = len(pool.slots)
        try:
            response = self.session.get(f"{host.url}/health",
                                        timeout=(HEALTH_TIMEOUT, HEALTH_TIMEOUT))
            body = response.json()
        except (requests.RequestException, ValueError):
            body = None
        ready = len(body.get("ready_slots", {})) if isinstance(body, dict) else 0
        if ready:
            self.hosts[pool.name].bring_back(host)
        return {"url": host.url, "status": _status(ready, workers), "workers": workers,
                "ready_workers": ready, "in_service": host.in_service,
                "outstanding": host.outstanding}

    def health(self) -> dict[str, dict[str, Any]]:
        """Every pool's health, its hosts asked in parallel so that dead ones cost one
        timeout in all."""
        asked = {name: [self.executor.submit(self.host_health, pool, host)
                        for host in self.hosts[name].hosts]
                 for name, pool in self.pools.items()}
        summaries = {}
        for name, futures_of_pool in asked.items():
            hosts = [future.result() for future in futures_of_pool]
            workers = self.pools[name].total_workers
            ready = sum(host["ready_workers"] for host in hosts)
            summaries[name] = {"url": hosts[0]["url"], "status": _status(ready, workers),
                               "workers": workers, "ready_workers": ready, "hosts": hosts}
        return summaries

    def close(self) -> None:
        self.watcher.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.session.close()


def _status(ready: int, workers: int) -> str:
    return "ok" if ready == workers else "degraded" if ready else "down"


def _failure(index: int, error: BaseException) -> Failure:
    if isinstance(error, WorkerTierError):
        return Failure(index, error.status, error.description)
    if isinstance(error, _WorkerDropped):
        return Failure(index, 502, str(error))
    log.error("sample %d failed unexpectedly", index, exc_info=error)
    return Failure(index, 502, "the front hit an unexpected error; it has been logged")


def _all_failed(pool: Pool, failed: list[Failure]) -> WorkerTierError:
    if all(f.status == 504 for f in failed):
        return WorkerTierError(504, "Worker tier timed out",
                               f"pool {pool.name!r} returned none of {len(failed)} samples "
                               "before the deadline")
    return WorkerTierError(502, "Worker tier error",
                           f"pool {pool.name!r} returned none of {len(failed)} samples: "
                           + "; ".join(sorted({f.reason for f in failed})))


def _pool_down(pool: Pool, unreachable: Mapping[str, str]) -> WorkerTierError:
    """503 for a pool none of whose hosts could be reached (``unreachable``: url -> why)."""
    what = "; ".join(f"{url} {why}" for url, why in unreachable.items())
    if len(unreachable) > 1:
        what = f"none of its {len(unreachable)} hosts could be reached: {what}"
    log.warning("pool %s is down: %s", pool.name, what)
    return WorkerTierError(503, "Worker tier unavailable",
                           f"pool {pool.name!r} is down ({what}); retry later",
                           retry_after=POOL_DOWN_RETRY_AFTER)


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


def _upstream_error(pool: Pool, status: int, body: Any) -> Exception:
    description = body.get("description") if isinstance(body, dict) else None
    if 400 <= status < 500 and status != 404 and isinstance(body, dict):
        # The worker rejected the parameters (e.g. a length past the model's window):
        # that is the client's error, reported with the worker's words.
        return WorkerTierError(status, body.get("title") or "Invalid parameter",
                               description or "rejected by the worker tier", body.get("field"))
    if status >= 500:
        # An unexpected error in one worker (out of memory, say): another may manage.
        return _WorkerDropped(f"pool {pool.name!r}: a worker answered {status}"
                              + (f" ({description})" if description else ""))
    return WorkerTierError(502, "Worker tier error",
                           f"pool {pool.name!r} answered {status}"
                           + (f": {description}" if description else ""))
