"""Start every tier of a layout, wait until all are healthy, stop them all on a signal.

    fanout serve [--layout FILE] [--start-timeout SECONDS] [--only TIER ...]

Each tier is a gunicorn master in its own process group, so stopping it reaches its
workers too; nothing is left behind when this supervisor is interrupted or terminated,
or when one tier dies (the others are then stopped and the exit status is non-zero).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import IO

import requests

from fanout.launch.memory_fit import oversubscription_warnings
from fanout.launch.tiers import Tier, tiers
from fanout.layout import (
    API_KEYS_ENV,
    FRONT_BIND_ENV,
    LAYOUT_ENV,
    Layout,
    describe,
)

POLL_SECONDS = 0.5
STOP_SECONDS = 30.0
_PR_SET_PDEATHSIG = 1


class Stop(Exception):
    """Raised by the signal handler to leave whatever the supervisor is waiting on."""


def _die_with_parent() -> None:
    # Linux: if the supervisor is killed outright (SIGKILL), its masters get SIGTERM.
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _say(line: str) -> None:
    print(line, flush=True)


class Supervisor:
    def __init__(self, layout: Layout, tier_list: list[Tier] | None = None,
                 output: IO[bytes] | None = None, say: Callable[[str], None] = _say,
                 env_drop: tuple[str, ...] = ()) -> None:
        """``tier_list`` replaces the layout's tiers (benchmarks swap in stand-ins);
        ``output`` takes the tiers' logs and ``say`` this supervisor's own lines, instead
        of this process's stdout; ``env_drop`` names variables the tiers must not see."""
        self.layout = layout
        self.env_drop = env_drop
        self.tier_list = tier_list if tier_list is not None else tiers(layout)
        self.output, self.say = output, say
        self.running: dict[str, tuple[Tier, subprocess.Popen[bytes]]] = {}

    def start(self) -> None:
        env_base = {**{k: v for k, v in os.environ.items() if k not in self.env_drop},
                    LAYOUT_ENV: str(self.layout.source)}
        for tier in self.tier_list:
            process = subprocess.Popen(tier.argv, env={**env_base, **tier.env},
                                       stdout=self.output, stderr=self.output,
                                       start_new_session=True, preexec_fn=_die_with_parent)
            self.running[tier.name] = (tier, process)
            self.say(f"started {tier.name} (pid {process.pid})")

    def dead(self) -> list[str]:
        return [f"{name} exited with status {process.returncode}"
                for name, (_, process) in self.running.items() if process.poll() is not None]

    def wait_healthy(self, timeout: float) -> None:
        """Block until every pool's every worker is ready: as the front reports it, or,
        with no front among the tiers started (``--only``), as each pool reports itself."""
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            if died := self.dead():
                raise RuntimeError("; ".join(died))
            ready, last = self._ready() if "front" in self.running else self._pools_ready()
            if ready:
                return
            time.sleep(POLL_SECONDS)
        raise RuntimeError(f"not healthy after {timeout:g}s ({last})")

    def _ready(self) -> tuple[bool, str]:
        try:
            body = requests.get(self.running["front"][0].health_url, timeout=2).json()
            if "edge" in self.running:  # and the edge passes it on
                requests.get(self.running["edge"][0].health_url, timeout=2).json()
        except (requests.RequestException, ValueError):
            return False, "no answer yet"
        return body.get("status") == "ok", ", ".join(
            f"{name}: {pool['ready_workers']}/{pool['workers']} ready"
            for name, pool in body.get("pools", {}).items())

    def _pools_ready(self) -> tuple[bool, str]:
        counts = []
        for name, (tier, _) in self.running.items():
            if not name.startswith("pool-"):
                continue
            workers = len(self.layout.pools[name.removeprefix("pool-")].slots)
            try:
                body = requests.get(tier.health_url, timeout=2).json()
                ready = len(body.get("ready_slots", {}))
            except (requests.RequestException, ValueError, AttributeError):
                ready = 0
            counts.append((name, ready, workers))
        return (all(ready == workers for _, ready, workers in counts),
                ", ".join(f"{name}: {ready}/{workers} ready" for name, ready, workers in counts))

    def watch(self) -> None:
        """Return when a tier dies (raising) or a signal arrives (raising Stop)."""
        while True:
            if died := self.dead():
                raise RuntimeError("; ".join(died))
            time.sleep(POLL_SECONDS)

    def stop(self) -> None:
        """SIGTERM every master (graceful), then SIGKILL any process group still there."""
        for _, process in self.running.values():
            if process.poll() is None:
                _signal_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        for name, (_, process) in self.running.items():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say(f"{name} did not stop in {STOP_SECONDS:g}s; killing it")
            # Workers of a master that died first may linger in its group: sweep them.
            _signal_group(process.pid, signal.SIGKILL)
            process.wait()


@contextlib.contextmanager
def running_tiers(layout: Layout, log_path: Path, timeout: float,
                  tier_list: list[Tier] | None = None) -> Iterator[Supervisor]:
    """For tools that start tiers of their own (bench, capacity): every tier running and
    healthy, all output in ``log_path`` (its tail quoted if they fail to start), and all
    stopped, process groups swept, however the block ends."""
    with log_path.open("wb") as log:
        def say(line: str) -> None:
            log.write(f"fanout: {line}\n".encode())
            log.flush()

        # The tools' tiers are private, on free ports, and their clients carry no key:
        # the shell's front address and API keys are for the server it runs, not these.
        supervisor = Supervisor(layout, tier_list, output=log, say=say,
                                env_drop=(FRONT_BIND_ENV, API_KEYS_ENV))
        try:
            supervisor.start()
            try:
                supervisor.wait_healthy(timeout)
            except RuntimeError as error:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{error}; from {log_path}:\n{tail}") from None
            yield supervisor
        finally:
            supervisor.stop()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise Stop(signal.Signals(signum).name)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--start-timeout", type=float, default=300.0,
                        help="seconds to wait for every worker to be ready (default 300)")
    parser.add_argument("--only", action="append", metavar="TIER",
                        help="start only this tier (front, which brings its edge; edge; "
                             "pool-NAME); repeatable. On a "
                             "machine that runs one pool for a front elsewhere: --only "
                             "pool-small")


def run(args: argparse.Namespace, layout: Layout) -> int:
    """``fanout serve``: start the tiers, say how to reach them, stop them on a signal."""
    print(describe(layout), flush=True)
    for warning in oversubscription_warnings(layout):  # an estimate: say so, do not refuse
        print(warning, file=sys.stderr, flush=True)
    tier_list = tiers(layout)
    if args.only:
        unknown = sorted(set(args.only) - {tier.name for tier in tier_list})
        if unknown:
            print(f"error: --only {unknown[0]}: not a tier of {layout.source} (tiers: "
                  + ", ".join(tier.name for tier in tier_list) + ")", file=sys.stderr)
            return 2
        wanted = set(args.only) | ({"edge"} if "front" in args.only else set())
        tier_list = [tier for tier in tier_list if tier.name in wanted]
    supervisor = Supervisor(layout, tier_list)
    signal.signal(signal.SIGINT, _raise_stop)
    signal.signal(signal.SIGTERM, _raise_stop)
    status = 0
    try:
        supervisor.start()
        supervisor.wait_healthy(args.start_timeout)
        url = layout.front.bind.url
        if any(tier.name == "front" for tier in tier_list):
            print(f"\nfanout is ready: {url}/\n  curl -s {url}/autocomplete "
                  "-H 'Content-Type: application/json' -d '{\"context\":\"The nation\"}'\n"
                  "Press Ctrl-C to stop.", flush=True)
        else:
            print("\nready: " + ", ".join(f"{tier.name} ({tier.health_url})"
                                         for tier in tier_list)
                  + "\nPress Ctrl-C to stop.", flush=True)
        supervisor.watch()
    except Stop as stop:
        print(f"\n{stop}: stopping", flush=True)
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        status = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the stop
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        supervisor.stop()
        print("stopped", flush=True)
    return status

