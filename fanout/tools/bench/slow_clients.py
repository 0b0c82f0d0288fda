"""What slow and silent clients do to everyone else, with the edge and without it.

    fanout slow-clients [--model DIR] [--probes 5] [--json FILE]

The same layout is served twice in one run, once with ``edge: {enabled: false}`` (the
front alone on the public address, as before the edge) and once with the edge. For each
way other clients misbehave, it probes ``GET /health`` and times a Tab (``POST
/autocomplete``, 3 samples) a few times and prints the medians and the probes that got
no answer within ``--timeout``. The misbehaving clients come from 127.0.0.2 and write at
a fixed pace (one header line or body byte a second), as a slow client on the network
does, whatever this machine's speed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
import yaml

from fanout.launch.serve import running_tiers
from fanout.layout import Layout, load_layout
from fanout.tools.ports import free_port

REPO = Path(__file__).resolve().parents[3]
HOSTILE_ADDRESS = "127.0.0.2"
TAB = {"context": "The nation", "n_samples": 3, "length": 2}
# (name, idle connections, header tricklers, body tricklers): the four cases.
SCENARIOS = (("quiet", 0, 0, 0), ("16 idle connections", 16, 0, 0),
             ("200 idle connections", 200, 0, 0), ("16 bodies trickling", 0, 0, 16),
             ("40 headers trickling", 0, 40, 0))


class Hostile:
    """Clients that hold connections: silent ones, and ones that trickle their headers or
    their body, one piece a second (the pace is theirs, not the machine's)."""

    def __init__(self, bind: tuple[str, int], idle: int, headers: int, bodies: int) -> None:
        self.bind, self.stop = bind, threading.Event()
        self.idle = [self._connect() for _ in range(idle)]
        self.headers = [self._connect() for _ in range(headers)]
        self.bodies = [self._connect() for _ in range(bodies)]
        for sock in self.headers:
            self._send(sock, b"POST /autocomplete HTTP/1.1\r\nHost: edge\r\n")
        for sock in self.bodies:
            self._send(sock, b"POST /autocomplete HTTP/1.1\r\nHost: edge\r\nContent-Type: "
                             b"application/json\r\nContent-Length: 4000\r\n\r\n{")
        self.thread = threading.Thread(target=self._trickle, daemon=True)
        self.thread.start()

    def _connect(self) -> socket.socket:
        sock = socket.socket()
        sock.bind((HOSTILE_ADDRESS, 0))
        sock.settimeout(5)
        sock.connect(self.bind)
        return sock

    @staticmethod
    def _send(sock: socket.socket, data: bytes) -> None:
        # The server may have hung up on it: what it should do, sooner or later.
        with contextlib.suppress(OSError):
            sock.sendall(data)

    def _trickle(self) -> None:
        line = 0
        while not self.stop.wait(1.0):
            line += 1
            for sock in self.headers:
                self._send(sock, f"X-Slow-{line}: x\r\n".encode())
            for sock in self.bodies:
                self._send(sock, b" ")

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        for sock in self.idle + self.headers + self.bodies:
            sock.close()

    def __enter__(self) -> Hostile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def layout_for(model: Path, edge: bool, directory: Path) -> Layout:
    document = {"front": {"bind": f"127.0.0.1:{free_port()}"},
                "edge": {"enabled": edge, "front_bind": f"127.0.0.1:{free_port()}"},
                "pools": {"small": {"model": str(model), "dtype": "float32",
                                    "bind": f"127.0.0.1:{free_port()}",
                                    "slots": [{"device": "cpu", "threads": 1}] * 3}}}
    path = directory / f"layout-{'edge' if edge else 'front'}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return load_layout(path)


def timed(call: Any, timeout: float) -> float | None:
    """Seconds ``call`` took, or None when it got no answer within ``timeout``."""
    started = time.perf_counter()
    try:
        response = call(timeout)
    except requests.RequestException:
        return None
    return time.perf_counter() - started if response.status_code == 200 else None


def measure(url: str, probes: int, timeout: float) -> dict[str, Any]:
    with requests.Session() as session:
        session.trust_env = False
        health = [timed(lambda t: session.get(f"{url}/health", timeout=t), timeout)
                  for _ in range(probes)]
        tabs = [timed(lambda t: session.post(f"{url}/autocomplete", json=TAB, timeout=t),
                      timeout) for _ in range(probes)]

    def summary(times: list[float | None]) -> dict[str, Any]:
        answered = [t for t in times if t is not None]
        return {"p50_ms": round(statistics.median(answered) * 1e3, 1) if answered else None,
                "no_answer": len(times) - len(answered), "of": len(times)}
    return {"health": summary(health), "tab": summary(tabs)}


@contextmanager
def serving(layout: Layout, directory: Path) -> Iterator[str]:
    with running_tiers(layout, directory / "tiers.log", 300.0):
        yield layout.front.bind.url


def both_ways(model: Path, probes: int, timeout: float) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="fanout-slow-") as folder:
        for edge in (False, True):
            layout = layout_for(model, edge, Path(folder))
            bind = (layout.front.bind.host, layout.front.bind.port)
            with serving(layout, Path(folder)) as url:
                for name, idle, headers, bodies in SCENARIOS:
                    with Hostile(bind, idle, headers, bodies):
                        time.sleep(1.0)  # the slow clients are in place, one piece sent
                        figures = measure(url, probes, timeout)
                    rows.append({"edge": edge, "scenario": name, **figures})
                    print(f"{'edge' if edge else 'front alone':12} {name:22} "
                          f"health {fmt(figures['health'])}   tab {fmt(figures['tab'])}",
                          flush=True)
    return rows


def fmt(summary: dict[str, Any]) -> str:
    p50 = f"{summary['p50_ms']:.1f} ms" if summary["p50_ms"] is not None else "-"
    return f"p50 {p50:>9}, {summary['no_answer']}/{summary['of']} no answer"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=REPO / "models" / "small")
    parser.add_argument("--probes", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--json", type=Path, help="also write the figures here")


def run(args: argparse.Namespace) -> int:
    """``fanout slow-clients``: both ways, every case; the figures printed (and --json)."""
    rows = both_ways(args.model.resolve(), args.probes, args.timeout)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0

