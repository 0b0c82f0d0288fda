#!/usr/bin/env python3
"""The container's health check: ``GET /health`` of the tier this container runs.

Exits 0 on a 200 and 1 otherwise, as Docker's ``HEALTHCHECK`` expects. The port is
``$FANOUT_HEALTH_PORT`` when set; otherwise the layout's: ``pools.$FANOUT_POOL.bind``
for a worker tier, ``front.bind`` for the front (and for ``serve``, whose front reports
every pool). Plain urllib: the slim image has no curl.
"""

from __future__ import annotations

import os
import sys
import urllib.request

PORT_ENV = "FANOUT_HEALTH_PORT"
TIMEOUT_SECONDS = 8.0  # below the image's HEALTHCHECK --timeout


def health_port(environ: dict[str, str] | None = None) -> int:
    """The port of this container's tier: the explicit one, else the layout's."""
    environ = dict(os.environ) if environ is None else environ
    if environ.get(PORT_ENV):
        return int(environ[PORT_ENV])
    from fanout.layout import POOL_ENV, load_layout  # only when the layout is needed

    layout = load_layout(environ.get("FANOUT_LAYOUT"))
    pool = environ.get(POOL_ENV)
    return (layout.pool(pool).bind if pool else layout.front.bind).port


def main() -> int:
    try:
        url = f"http://127.0.0.1:{health_port()}/health"
    except Exception as error:  # a broken layout or port is unhealthy, not a traceback
        print(f"unhealthy: {error}", file=sys.stderr)
        return 1
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
            return 0 if response.status == 200 else 1
    except OSError as error:  # refused, timed out, or an HTTP error status (503: not ready)
        print(f"unhealthy: {url}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
