"""Keep the test process on loopback while client libraries run in it.

Client libraries reach out on their own: LiteLLM fetches a price list when imported,
tiktoken downloads its encodings, LangSmith may send traces. On a machine without internet
such a call fails slowly or is swallowed by a fallback; ``loopback_only`` makes it loud.
It watches through an audit hook (``sys.addaudithook``), so no library is patched; the hook
stays for the life of the process but records nothing outside the block.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}
_attempts: list[list[str]] = []  # one list per open ``loopback_only`` block
_hooked = False


def _is_loopback(host: object) -> bool:
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    if not isinstance(host, str):
        return host is None  # getaddrinfo(None, port): the local host's own addresses
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:  # a host name, to be resolved: not loopback
        return False


def _watch(event: str, args: tuple[Any, ...]) -> None:
    if not _attempts:
        return
    if event == "socket.getaddrinfo":
        host = args[0]
    elif event == "socket.connect" and isinstance(args[1], tuple):
        host = args[1][0]
    else:  # a Unix socket's path, or nothing that goes over the network
        return
    if not _is_loopback(host):
        _attempts[-1].append(f"{event} {host!r}")
        raise OSError(f"test process tried to reach {host!r}: only loopback is allowed")


@contextmanager
def loopback_only() -> Iterator[list[str]]:
    """In the block, a name lookup or a connection beyond loopback fails with ``OSError``;
    the list yielded gathers them, so a caller can fail even when a library swallowed it."""
    global _hooked
    if not _hooked:
        sys.addaudithook(_watch)
        _hooked = True
    attempts: list[str] = []
    _attempts.append(attempts)
    try:
        yield attempts
    finally:
        _attempts.pop()
