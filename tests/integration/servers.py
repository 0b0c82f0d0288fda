"""Run real gunicorn tiers on loopback for tests, the way falcon's own server tests do."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from fanout.launch.tiers import tiers
from fanout.layout import LAYOUT_ENV, load_layout

READY_SECONDS = 120.0
REPO = Path(__file__).resolve().parents[2]


class RunningTiers:
    """The gunicorn masters of a layout, started and stopped together."""

    def __init__(self, layout_path: Path, log_dir: Path, only: set[str] | None = None,
                 env: Mapping[str, str] | None = None,
                 apps: Mapping[str, str] | None = None) -> None:
        """``env`` adds to the environment every tier starts with (e.g. ``FANOUT_API_KEYS``);
        ``apps`` swaps a tier's WSGI app for a stand-in (tier name -> ``module:get_app()``)."""
        self.layout = load_layout(layout_path)
        self.apps = dict(apps or {})
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}
        self.log_dir = log_dir
        self.env = {**os.environ, LAYOUT_ENV: str(layout_path), "FANOUT_LOG_LEVEL": "info",
                    **(env or {})}
        for tier in tiers(self.layout):
            # The front's edge comes with it: the front's public address is the edge's.
            if only is None or tier.name in only or (tier.name == "edge" and "front" in only):
                self.start(tier.name)

    def start(self, name: str) -> None:
        """Start one tier (``front`` or ``pool-NAME``); its log is appended to."""
        tier = next(t for t in tiers(self.layout) if t.name == name)
        argv = tier.argv
        if name in self.apps:  # tests/ is no installed package: gunicorn finds it here
            argv = (*argv[:-1], "--pythonpath", str(REPO), self.apps[name])
        self.logs[name] = self.log_dir / f"{name}.log"
        with self.logs[name].open("ab") as log:
            self.processes[name] = subprocess.Popen(
                argv, env={**self.env, **tier.env}, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)

    def stop_tier(self, name: str) -> None:
        """Stop one tier and all its workers, as an operator or a crash would."""
        process = self.processes.pop(name)
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)

    @property
    def front_url(self) -> str:
        return self.layout.front.bind.url

    def pool_url(self, name: str) -> str:
        return self.layout.pools[name].bind.url

    def wait_ready(self, pools: set[str] | None = None) -> None:
        """Until each named pool (default: all started) reports every slot ready."""
        names = pools if pools is not None else {
            name.removeprefix("pool-") for name in self.processes if name.startswith("pool-")}
        deadline = time.monotonic() + READY_SECONDS
        for name in sorted(names):
            self.wait_until(partial(self._pool_ready, name), f"pool {name} ready",
                            deadline - time.monotonic(), every=0.2)
        if "front" in self.processes:
            # The editor page: served once the app is loaded, and open even with API keys.
            # Asked of the front itself: through the edge, the asking would count against
            # the client's rate.
            self.wait_until(lambda: _answers(f"{self.layout.front_listen.url}/"),
                            "front ready", deadline - time.monotonic(), every=0.2)
        if "edge" in self.processes:
            self.wait_until(lambda: _accepts(self.layout.front.bind.url), "edge ready",
                            deadline - time.monotonic(), every=0.2)

    def _pool_ready(self, pool: str) -> bool:
        return len(self.ready_slots(pool)) >= len(self.layout.pools[pool].slots)

    def ready_slots(self, pool: str) -> dict[str, int]:
        return ready_slots(self.pool_url(pool))

    def _check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{self.log_tail()}")

    def wait_until(self, done: Callable[[], bool], what: str,
                   seconds: float = READY_SECONDS, every: float = 0.05) -> None:
        """Until ``done()`` holds, looking every ``every`` seconds; a tier that exits or
        ``seconds`` that run out end the wait with an error naming ``what``."""
        deadline = time.monotonic() + seconds
        while not done():
            self._check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"not {what} after {seconds:.0f}s:\n{self.log_tail()}")
            time.sleep(every)

    def log_size(self, name: str) -> int:
        """Where tier ``name``'s log ends now: pass it to ``wait_for_log`` as ``since``."""
        return self.logs[name].stat().st_size

    def wait_for_log(self, name: str, text: str, since: int = 0,
                     seconds: float = READY_SECONDS) -> None:
        """Until tier ``name`` logs ``text`` (after byte ``since`` of its log)."""
        self.wait_until(lambda: text in self.logs[name].read_bytes()[since:].decode(
            errors="replace"), f"{text!r} in {name}'s log", seconds)

    def request_lines(self, name: str, request_id: str, count: int,
                      seconds: float = READY_SECONDS) -> list[dict[str, Any]]:
        """Tier ``name``'s JSON log lines for ``request_id``, once there are ``count``."""
        self.wait_until(lambda: len(self._request_lines(name, request_id)) >= count,
                        f"{count} lines for {request_id} in {name}'s log", seconds)
        return self._request_lines(name, request_id)

    def _request_lines(self, name: str, request_id: str) -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in self.logs[name].read_text().splitlines()
                 if line.startswith("{")]
        return [line for line in lines if line.get("request_id") == request_id]

    def wait_serving(self, pool: str, pids: list[int],
                     seconds: float = READY_SECONDS) -> None:
        """Until each worker in ``pids`` (of ``pool``) holds a connection it accepted, that
        is, serves a request now (a sync worker serves one at a time)."""
        self.wait_until(lambda: all(serving(pid) for pid in pids),
                        f"workers {pids} of {pool} all serving", seconds, every=0.02)

    def wait_inflight(self, count: int, seconds: float = READY_SECONDS) -> None:
        """Until the front counts ``count`` requests in flight (asked of the front itself,
        not through its edge)."""
        health = f"{self.layout.front_listen.url}/health"
        self.wait_until(lambda: requests.get(health, timeout=10).json()["load"][
            "inflight"] == count, f"{count} requests in flight at the front", seconds)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(f"--- {name}\n" + "\n".join(path.read_text().splitlines()[-lines:])
                         for name, path in self.logs.items())

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def ready_slots(url: str) -> dict[str, int]:
    """The ready slots (slot -> pid) a worker-tier server at ``url`` reports; none when it
    does not answer."""
    try:
        body: dict[str, Any] = requests.get(f"{url}/health", timeout=2).json()
    except (requests.RequestException, ValueError):
        return {}
    return dict(body.get("ready_slots", {}))


@contextmanager
def started(document: Mapping[str, Any], folder: Path, ready: set[str] | None = None,
            **options: Any) -> Iterator[RunningTiers]:
    """The tiers of layout ``document``, written to ``folder``/gpu_layout.yaml (their
    logs beside it), until ``ready`` pools (default: all) answer; stopped after the block.
    ``options`` go to ``RunningTiers``."""
    path = folder / "gpu_layout.yaml"
    path.write_text(yaml.safe_dump(dict(document), sort_keys=False))
    running = RunningTiers(path, folder, **options)
    try:
        running.wait_ready(ready)
        yield running
    finally:
        running.stop()


@contextmanager
def paused(pids: Iterable[int]) -> Iterator[None]:
    """Workers stopped (SIGSTOP) for the block: they accept and answer nothing meanwhile."""
    stopped = list(pids)
    for pid in stopped:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in stopped:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def in_accept(pid: int) -> bool:
    """Is sync worker ``pid`` idle, its main thread in select() on its listener (where a
    gathering worker has marked itself idle)? Read from /proc/<pid>/wchan."""
    try:
        return "poll" in Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return False


def queued(url: str) -> int:
    """Connections waiting for a worker in the accept queue of the server at ``url``: a
    listening socket's Recv-Q, as ss reads it from the kernel."""
    listening = subprocess.run(["ss", "-Hltn", f"sport = :{urlsplit(url).port}"],
                               capture_output=True, text=True, check=True).stdout
    return sum(int(line.split()[1]) for line in listening.splitlines() if line.strip())


def serving(pid: int) -> bool:
    """Does sync worker ``pid`` hold a connection it accepted? It shares its master's
    listening sockets, and holds one socket more while it serves a request.

    Read from /proc/<pid>/fd alone: the kernel's TCP table (/proc/net/tcp, which psutil
    reads to match sockets to ports) took up to seconds a read on a loaded machine,
    longer than the samples a faults test must catch in progress."""
    try:
        master = psutil.Process(pid).ppid()
        return bool(_sockets(pid) - _sockets(master))
    except (psutil.Error, OSError):
        return False


def _sockets(pid: int) -> set[str]:
    """The sockets process ``pid`` holds open, as /proc names them (``socket:[inode]``)."""
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with suppress(OSError):  # closed since the listing
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:"):
                found.add(link)
    return found


def _accepts(url: str) -> bool:
    """Does a server listen at ``url``? A TCP connection, no request sent."""
    address = urlsplit(url)
    try:
        with socket.create_connection((address.hostname, address.port), timeout=2):
            return True
    except OSError:
        return False


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def still_running(pids: list[int]) -> list[int]:
    """The pids that are live processes (a zombie awaiting its parent counts as gone)."""
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0]
        except (FileNotFoundError, ProcessLookupError):
            continue
        if state != "Z":
            alive.append(pid)
    return alive


Scrape = dict[str, list[Sample]]


def scrape(url: str) -> Scrape:
    """A tier's /metrics, its samples by name."""
    response = requests.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain")
    found: Scrape = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append(sample)
    return found


def total(scraped: Scrape, name: str, **labels: str) -> float:
    """The sum of the samples ``name`` whose labels include ``labels``."""
    return sum(s.value for s in scraped.get(name, [])
               if all(s.labels.get(key) == value for key, value in labels.items()))
