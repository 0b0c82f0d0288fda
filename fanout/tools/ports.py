"""A free loopback port, for the tools and tests that start tiers of their own.

The port is picked here and bound later by another process, so it must stay free in
between. A port the kernel picks (bind to 0) comes from the ephemeral range, which every
outgoing connection on the machine also draws from: a test's own HTTP client can take it
in the gap. So ports come from below that range, never twice from one process, and
randomly, so that two runs side by side seldom try the same one.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 10_000
_handed_out: set[int] = set()
_pick = random.Random()


def _below_ephemeral() -> int:
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default start of the range


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A loopback port nothing listens on, outside the ephemeral range, not handed out before
    by this process."""
    top = _below_ephemeral()
    if top - _LOWEST >= 1_000:
        for _ in range(200):
            port = _pick.randrange(_LOWEST, top)
            if port not in _handed_out and _bindable(port):
                _handed_out.add(port)
                return port
    with socket.socket() as sock:  # no room below the range: let the kernel pick
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    _handed_out.add(port)
    return port
