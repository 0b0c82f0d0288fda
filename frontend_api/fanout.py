"""Send one request's N samples to a pool's worker tier in parallel and gather them.

This is the fan-out policy; how one request reaches one host, and what its failures mean,
is the transport's (frontend_api.transport). Each sample is its own HTTP request from its
own thread; the worker tier's sync workers take one request each, so N idle workers
generate the N samples at the same time. All N share one deadline.

Faults, sample by sample: a worker that dies mid-generation drops its connection, and
the sample is sent again (another worker, or the respawned one, takes it) while the
deadline allows. A worker that hangs costs only its own sample: at the deadline the
request answers with the samples it has (``partial``). A pool may run on several hosts
(frontend_api.hosts): each sample goes to the one with the fewest outstanding, and a
host that refuses or cannot be reached is skipped for the next. A pool none of whose
hosts can be reached is down: the request fails at once with 503 and Retry-After.
Samples still out when the request ends (deadline, or the client went away) have their
connections cut, which tells their workers to stop generating.

Distinct samples (``AutocompleteRequest.distinct``, not for streams: a streamed text is
shown before it is known to repeat another): a sample whose text, trimmed and with its
whitespace collapsed, is empty, an earlier sample's of the same prompt or one the request
excludes is sent again with the next seed (a prompt's samples have seed..seed+n-1, so
seed+n, seed+n+1, ...; unseeded, a fresh one) on the worker it just freed, while the
deadline allows and at most MAX_RESAMPLES times a sample. Until a distinct one comes,
the repeat stands: a sample that cannot be replaced in time is answered as it is.
"""

from __future__ import annotations

import concurrent.futures as futures
import contextlib
import logging
import queue
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import replace
from typing import Any, TypeVar

from fanout.layout import Pool
from fanout.observe import current_request_id, note
from fanout.params import MAX_SEED
from fanout.protocol import GenerationParams, StreamPiece, WorkerCompletion
from frontend_api.errors import (
    POOL_DOWN_RETRY_AFTER,
    ClientGone,
    HostUnreachable,
    WorkerDropped,
    WorkerTierError,
)
from frontend_api.hosts import Host, HostSet, HostWatcher
from frontend_api.metrics import SAMPLE_FAILURES, SAMPLE_RESAMPLES, SAMPLE_RETRIES, SAMPLES
from frontend_api.samples import AutocompleteRequest, Failure, Gathered, Sample, StreamEvent
from frontend_api.transport import Cutter, WorkerTransport

log = logging.getLogger(__name__)

# How often a waiting request looks at its client's connection.
POLL_SECONDS = 0.05
# A sample whose worker died is sent again at most this often, and only with this much
# of the deadline left: less than that cannot produce a useful sample.
MAX_RETRIES = 2
RETRY_MIN_SECONDS = 0.2
# A sample that repeats another is sent again at most this often (distinct requests); not
# at all when the workers decode greedily (below this temperature), which repeats it.
MAX_RESAMPLES = 2
GREEDY_BELOW = 1e-6  # worker_api.engines.base.MIN_SAMPLING_TEMPERATURE

_Result = TypeVar("_Result")


def _never() -> bool:
    return False


class FanoutClient:
    """Holds the thread pool and the transport shared by every request of the front."""

    def __init__(self, pools: Mapping[str, Pool], threads: int, network_slack: float,
                 host_check_seconds: float = 2.0) -> None:
        self.pools = pools
        self.network_slack = network_slack
        self.hosts = {name: HostSet(name, pool.urls) for name, pool in pools.items()}
        self.executor = futures.ThreadPoolExecutor(max_workers=threads,
                                                   thread_name_prefix="fanout")
        self.transport = WorkerTransport(
            [url for pool in pools.values() for url in pool.urls], threads)
        self.watcher = HostWatcher(self.hosts, host_check_seconds)

    def complete(self, request: AutocompleteRequest,
                 client_gone: Callable[[], bool] = _never) -> Gathered:
        """The samples that arrive by the deadline, or a WorkerTierError if none can.

        Raises ClientGone when ``client_gone`` says the requester left; the samples still
        out are then cut off, so an abandoned request leaves no work behind.
        """
        pool = self.pools[request.model_size]
        deadline = time.monotonic() + request.params.max_time + self.network_slack
        cutters = [Cutter() for _ in range(request.n_samples)]
        # Read here: the fan-out threads that send the samples serve no request of their own.
        request_id = current_request_id()
        SAMPLES.labels(pool.name).observe(request.n_samples)

        def send(index: int, params: GenerationParams) -> futures.Future[Sample]:
            return self.executor.submit(self._sample, pool, params, deadline, cutters[index],
                                        request_id)

        pending = {send(i, params): i for i, params in enumerate(request.sample_params())}
        distinct = Distinct(request) if request.distinct else None
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
                        again = distinct and distinct.again(index, samples[index].text,
                                                            deadline - time.monotonic())
                        if again:  # a repeat: it stands until a distinct one comes
                            SAMPLE_RESAMPLES.labels(pool.name).inc()
                            resent = send(index, again)
                            pending[resent] = index
                            waiting.add(resent)
                    elif index in samples:
                        pass  # a repeat's second try failed: the repeat stands
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
            if pending[future] not in samples:
                failed[pending[future]] = Failure(pending[future], 504,
                                                  "no answer before the deadline")
        for failure in failed.values():
            SAMPLE_FAILURES.labels(pool.name, str(failure.status)).inc()
        if not samples:
            raise _all_failed(pool, sorted(failed.values(), key=lambda f: f.index))
        if failed:
            log.warning("pool %s: %d of %d samples failed: %s", pool.name, len(failed),
                        request.n_samples, "; ".join(f.reason for f in failed.values()))
        note(partial=bool(failed))
        return Gathered([samples[i] for i in sorted(samples)],
                        [failed[i] for i in sorted(failed)],
                        resampled=distinct.resampled if distinct else 0)

    def _sample(self, pool: Pool, params: GenerationParams, deadline: float,
                cutter: Cutter, request_id: str | None = None) -> Sample:
        """One sample, sent again if its worker dies while the deadline allows."""
        for attempt in range(MAX_RETRIES + 1):
            try:
                return self._generate(pool, params, deadline, cutter, request_id)
            except WorkerDropped as dropped:
                left = deadline - time.monotonic()
                if cutter.cut or attempt == MAX_RETRIES or left < RETRY_MIN_SECONDS:
                    raise WorkerTierError(502, "Worker tier error", str(dropped)) from None
                log.warning("%s; sending the sample again (%.1fs left)", dropped, left)
                SAMPLE_RETRIES.labels(pool.name).inc()
                # The retry has less time: it should end with a shorter sample, not none.
                params = replace(params, max_time=max(0.01, min(params.max_time,
                                                                left - RETRY_MIN_SECONDS)))
        raise AssertionError("unreachable")

    def _generate(self, pool: Pool, params: GenerationParams, deadline: float,
                  cutter: Cutter, request_id: str | None) -> Sample:
        return self._on_some_host(pool, lambda host: self._generate_on(
            host, pool, params, deadline, cutter, request_id))

    def _generate_on(self, host: Host, pool: Pool, params: GenerationParams, deadline: float,
                     cutter: Cutter, request_id: str | None) -> Sample:
        started = time.monotonic()
        completion = self.transport.generate(pool.name, host.url, params, deadline, cutter,
                                             request_id)
        return Sample.arrived(completion, time.monotonic() - started, host.url)

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
            except HostUnreachable as exc:
                host_set.take_out(host, str(exc))
                unreachable[host.url] = str(exc)
        raise _pool_down(pool, unreachable)

    def stream(self, request: AutocompleteRequest) -> Generator[StreamEvent, None, None]:
        """Every sample's text as its worker generates it, in arrival order: ``(index,
        StreamPiece)`` pieces, then ``(index, Sample)`` or ``(index, Failure)`` for each
        sample.

        Samples still out at the deadline end as 504 failures; closing the iterator early
        (the client left) cuts their connections, so their workers stop. A sample whose
        worker dies mid-stream is not sent again: its text so far has been shown.
        """
        pool = self.pools[request.model_size]
        deadline = time.monotonic() + request.params.max_time + self.network_slack
        events: queue.Queue[StreamEvent] = queue.Queue()
        cutters = [Cutter() for _ in range(request.n_samples)]
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
                       deadline: float, cutter: Cutter, put: Callable[[StreamEvent], None],
                       request_id: str | None = None) -> None:
        try:
            self._on_some_host(pool, lambda host: self._stream_on(
                host, pool, params, index, deadline, cutter, put, request_id))
        except WorkerTierError as down:
            put((index, _failure(index, down)))

    def _stream_on(self, host: Host, pool: Pool, params: GenerationParams, index: int,
                   deadline: float, cutter: Cutter, put: Callable[[StreamEvent], None],
                   request_id: str | None) -> None:
        """One sample streamed from ``host``: each line as an event, any failure as the
        sample's Failure; HostUnreachable (before any line) goes on to the next host."""
        started = time.monotonic()
        lines = self.transport.stream(pool.name, host.url, params, deadline, cutter,
                                      request_id)
        try:
            with contextlib.closing(lines):
                for line in lines:
                    if isinstance(line, WorkerCompletion):
                        put((index, Sample.arrived(line, time.monotonic() - started,
                                                   host.url)))
                    else:
                        put((index, line))
        except (WorkerTierError, WorkerDropped) as error:
            put((index, _failure(index, error)))

    def ask(self, pool_name: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """One small JSON request (``/tokenize``, ``/detokenize``) to one of the pool's
        workers; its 4xx comes back as the client's error, naming the worker's field."""
        pool = self.pools[pool_name]
        return self._on_some_host(pool, lambda host: self.transport.ask(
            pool.name, host.url, path, body))

    def host_health(self, pool: Pool, host: Host) -> dict[str, Any]:
        """One host's state as its worker tier reports it; ``down`` when it cannot be asked.
        A host out of service that answers with ready workers is back in service."""
        workers = len(pool.slots)
        health = self.transport.health(host.url)
        ready = health.ready_workers if health is not None else 0
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
        self.transport.close()


class Distinct:
    """A distinct request's bookkeeping: the texts each prompt has (and those excluded),
    and which sample to send again with which seed."""

    def __init__(self, request: AutocompleteRequest) -> None:
        self.request, self.params = request, request.sample_params()
        excluded = {normalized(text) for text in request.exclude}
        self.texts = [set(excluded) for _ in range(max(1, len(request.prompts)))]
        self.sent_again = [0] * len(self.texts)  # per prompt: the next seed's offset
        self.tries = [0] * request.n_samples
        self.resampled = 0

    def again(self, index: int, text: str, left: float) -> GenerationParams | None:
        """The parameters to send sample ``index`` again with when ``text`` repeats (and
        time and its tries allow); None when it stands."""
        prompt, per = index // self.request.per_prompt, self.request.per_prompt
        key = normalized(text)
        if key and key not in self.texts[prompt]:
            self.texts[prompt].add(key)
            return None
        params = self.params[index]
        if (self.tries[index] >= MAX_RESAMPLES or left < RETRY_MIN_SECONDS
                or params.temperature < GREEDY_BELOW):
            return None
        seed = self.request.params.seed
        offset = per + self.sent_again[prompt]
        self.tries[index] += 1
        self.sent_again[prompt] += 1
        self.resampled += 1
        return replace(params, seed=None if seed is None else (seed + offset) % (MAX_SEED + 1),
                       max_time=max(0.01, min(params.max_time, left - RETRY_MIN_SECONDS)))


def normalized(text: str) -> str:
    """A text as distinct samples compare it: trimmed, its whitespace collapsed."""
    return " ".join(text.split())


def _status(ready: int, workers: int) -> str:
    return "ok" if ready == workers else "degraded" if ready else "down"


def _failure(index: int, error: BaseException) -> Failure:
    if isinstance(error, WorkerTierError):
        return Failure(index, error.status, error.description)
    if isinstance(error, WorkerDropped):
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
