"""Send one request's N samples to a pool's worker tier in parallel and gather them.

This is the one place the front talks to workers. Each sample is its own HTTP request
from its own thread; the worker tier's sync workers take one request each, so N idle
workers generate the N samples at the same time. All N share one deadline.
"""

from __future__ import annotations

import concurrent.futures as futures
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from fanout.layout import Pool
from fanout.params import AutocompleteRequest, GenerationParams

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 2.0
HEALTH_TIMEOUT = 1.0


class WorkerTierError(Exception):
    """A pool's worker tier failed a request; carries the status the front should answer."""

    def __init__(self, status: int, title: str, description: str, field: str | None = None):
        super().__init__(description)
        self.status, self.title, self.description, self.field = status, title, description, field


@dataclass(frozen=True)
class Sample:
    """One completion as a worker returned it, plus the round trip seen by the front."""

    text: str
    time: float
    round_trip: float
    tokens: int
    finish_reason: str
    seed: int
    worker: dict[str, Any]


class FanoutClient:
    """Holds the thread pool and HTTP session shared by every request of the front."""

    def __init__(self, pools: Mapping[str, Pool], threads: int, network_slack: float) -> None:
        self.pools = pools
        self.network_slack = network_slack
        self.executor = futures.ThreadPoolExecutor(max_workers=threads,
                                                   thread_name_prefix="fanout")
        self.session = requests.Session()
        # Worker tiers are ours, reached directly: an HTTP(S)_PROXY or .netrc meant for the
        # host's outbound traffic must not apply to them, and skipping those look-ups (done
        # on every request otherwise) takes a share of the front's per-sample overhead.
        self.session.trust_env = False
        adapter = HTTPAdapter(pool_connections=len(pools), pool_maxsize=threads, max_retries=0)
        self.session.mount("http://", adapter)

    def complete(self, request: AutocompleteRequest) -> list[Sample]:
        """The request's ``n_samples`` completions, in sample order, or a WorkerTierError."""
        pool = self.pools[request.model_size]
        deadline = time.monotonic() + request.params.max_time + self.network_slack
        pending = [self.executor.submit(self._generate, pool, params, deadline)
                   for params in request.sample_params()]
        # Stop waiting at the first failure: the answer is an error whatever the rest do.
        done, not_done = futures.wait(pending, timeout=max(0.0, deadline - time.monotonic()),
                                      return_when=futures.FIRST_EXCEPTION)
        for future in not_done:
            future.cancel()
        failed = next((f.exception() for f in done if f.exception() is not None), None)
        if failed is not None:
            raise failed
        if not_done:
            raise WorkerTierError(504, "Worker tier timed out",
                                  f"pool {pool.name!r} returned {len(done)} of "
                                  f"{len(pending)} samples before the deadline")
        return [future.result() for future in pending]

    def _generate(self, pool: Pool, params: GenerationParams, deadline: float) -> Sample:
        started = time.monotonic()
        try:
            response = self.session.post(
                f"{pool.bind.url}/generate", json=params.to_json(),
                timeout=(CONNECT_TIMEOUT, max(0.1, deadline - started)))
        except requests.Timeout:
            raise WorkerTierError(504, "Worker tier timed out",
                                  f"pool {pool.name!r} did not answer in time") from None
        except requests.RequestException as exc:
            log.warning("pool %s at %s unreachable: %s", pool.name, pool.bind.url, exc)
            raise WorkerTierError(502, "Worker tier unavailable",
                                  f"pool {pool.name!r} at {pool.bind.url} cannot be "
                                  f"reached") from None
        body = _json_or_none(response)
        if response.status_code != 200 or not isinstance(body, dict):
            raise _upstream_error(pool, response.status_code, body)
        try:
            return Sample(text=body["text"], time=body["time"],
                          round_trip=time.monotonic() - started, tokens=body["tokens"],
                          finish_reason=body["finish_reason"], seed=body["seed"],
                          worker=body["worker"])
        except KeyError as missing:
            raise WorkerTierError(502, "Worker tier error",
                                  f"pool {pool.name!r} answered without {missing}") from None

    def pool_health(self, pool: Pool) -> dict[str, Any]:
        """A pool's state as its worker tier reports it; ``down`` when it cannot be asked."""
        summary: dict[str, Any] = {"url": pool.bind.url, "workers": len(pool.slots)}
        try:
            response = self.session.get(f"{pool.bind.url}/health",
                                        timeout=(HEALTH_TIMEOUT, HEALTH_TIMEOUT))
            body = response.json()
        except (requests.RequestException, ValueError):
            return {**summary, "status": "down", "ready_workers": 0}
        ready = len(body.get("ready_slots", {})) if isinstance(body, dict) else 0
        status = "ok" if ready == len(pool.slots) else "degraded" if ready else "down"
        return {**summary, "status": status, "ready_workers": ready}

    def health(self) -> dict[str, dict[str, Any]]:
        """Every pool's health, asked in parallel so one dead pool costs one timeout."""
        asked = {name: self.executor.submit(self.pool_health, pool)
                 for name, pool in self.pools.items()}
        return {name: future.result() for name, future in asked.items()}

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.session.close()


def _json_or_none(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _upstream_error(pool: Pool, status: int, body: Any) -> WorkerTierError:
    description = body.get("description") if isinstance(body, dict) else None
    if 400 <= status < 500 and status != 404 and isinstance(body, dict):
        # The worker rejected the parameters (e.g. a length past the model's window):
        # that is the client's error, reported with the worker's words.
        return WorkerTierError(status, body.get("title") or "Invalid parameter",
                               description or "rejected by the worker tier", body.get("field"))
    return WorkerTierError(502, "Worker tier error",
                           f"pool {pool.name!r} answered {status}"
                           + (f": {description}" if description else ""))
