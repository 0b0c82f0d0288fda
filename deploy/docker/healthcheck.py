#!/usr/bin/env python3
"""The container's health check: ``GET /health`` of the tier this container runs.

    fanout-healthcheck [--listening] [TIER]

Exits 0 on a 200 and 1 otherwise, as Docker's ``HEALTHCHECK`` expects. The tier is TIER
(front, edge, pool or serve), else ``pool`` when ``$FANOUT_POOL`` is set, else the one
that PID 1 runs: one image check serves every container, and behind an edge the front
and the edge listen on different ports. The address is the tier's in the layout
(``fanout.launch.tiers``): a pool's bind, the front's ``edge.front_bind`` behind an edge,
the edge's ``front.bind``; ``serve`` is checked through its edge (or front), which reports
every pool. ``$FANOUT_HEALTH_PORT`` overrides it with ``127.0.0.1:PORT``.

``--listening`` only checks that the address accepts a connection: a liveness check
that neither a busy tier nor a pool that is down can fail. Plain urllib: the slim image
has no curl.
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.request
from urllib.parse import urlsplit

PORT_ENV = "FANOUT_HEALTH_PORT"
TIMEOUT_SECONDS = 8.0  # below the image's HEALTHCHECK --timeout
TIERS = ("front", "edge", "pool", "serve")


def running_tier(environ: dict[str, str], cmdline: bytes | None = None) -> str:
    """The tier this container runs: a pool's when $FANOUT_POOL is set; else PID 1's."""
    if environ.get("FANOUT_POOL"):
        return "pool"
    if cmdline is None:
        try:
            with open("/proc/1/cmdline", "rb") as file:
                cmdline = file.read()
        except OSError:
            return "front"
    # NUL-separated; nginx rewrites its own as one line ("nginx: master process ...").
    words = cmdline.replace(b"\0", b" ").decode(errors="replace").split()
    commands = set()
    for index, word in enumerate(words[:-1]):
        if os.path.basename(word) == "fanout-tier":  # docker run --init: PID 1 is its init
            return words[index + 1]
        if os.path.basename(word) == "fanout":  # `python -m fanout edge`, `fanout serve`
            commands.add(words[index + 1])
    if "nginx" in " ".join(words) or "edge" in commands:
        return "edge"
    return "serve" if "serve" in commands else "front"


def health_url(tier: str, environ: dict[str, str] | None = None) -> str:
    """``/health`` of ``tier`` on this host: the explicit port, else the layout's."""
    environ = dict(os.environ) if environ is None else environ
    if environ.get(PORT_ENV):
        return f"http://127.0.0.1:{int(environ[PORT_ENV])}/health"
    # Only when the layout is needed.
    from fanout.launch.tiers import tiers
    from fanout.layout import POOL_ENV, load_layout

    layout = load_layout(environ.get("FANOUT_LAYOUT"))
    urls = {entry.name: entry.health_url for entry in tiers(layout)}
    if tier == "pool":
        name = f"pool-{environ.get(POOL_ENV, '')}"
    elif tier == "serve":
        name = list(urls)[-1]  # the edge, or the front without one: the way clients come
    else:
        name = tier
    if name not in urls:
        raise ValueError(f"{layout.source} runs no tier {name!r} (it runs {', '.join(urls)})")
    return urls[name]


def listening(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=TIMEOUT_SECONDS):
            return True
    except OSError as error:
        print(f"unhealthy: {parts.netloc}: {error}", file=sys.stderr)
        return False


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    connect_only = "--listening" in args
    named = [arg for arg in args if arg != "--listening"]
    try:
        if len(named) > 1 or (named and named[0] not in TIERS):
            raise ValueError(f"usage: fanout-healthcheck [--listening] [{'|'.join(TIERS)}]")
        url = health_url(named[0] if named else running_tier(dict(os.environ)))
    except Exception as error:  # a broken layout or port is unhealthy, not a traceback
        print(f"unhealthy: {error}", file=sys.stderr)
        return 1
    if connect_only:
        return 0 if listening(url) else 1
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
            return 0 if response.status == 200 else 1
    except OSError as error:  # refused, timed out, or an HTTP error status (503: not ready)
        print(f"unhealthy: {url}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
