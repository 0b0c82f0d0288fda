"""Has the other end of an HTTP connection gone away?

Both tiers answer one request per connection after reading its whole body, so while a
request is being served its socket has nothing more to read: it turns readable only
when the client closes it. The front uses this to stop a fan-out whose editor left; a
worker uses it to stop generating for a front that stopped waiting.
"""

from __future__ import annotations

import select
import socket
from collections.abc import Callable
from typing import Any


def peer_gone(sock: socket.socket) -> bool:
    """True once the peer closed or reset the connection; never blocks."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except (OSError, ValueError):  # reset, or already closed on our side
        return True


def client_gone_check(environ: dict[str, Any]) -> Callable[[], bool]:
    """A check for the request's client; always False where the server hides its socket."""
    sock = environ.get("gunicorn.socket")
    if not isinstance(sock, socket.socket):
        return lambda: False
    return lambda: peer_gone(sock)
