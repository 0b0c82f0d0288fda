"""Who the client is, behind the edge: X-Forwarded-For, believed only from the edge.

The edge (nginx, ``fanout.launch.edge``) connects from loopback and sets ``X-Forwarded-For`` to
the address it saw. Any other peer could write whatever it likes in that header, so it
counts only when the connection comes from the edge; without an edge, never.
"""

from __future__ import annotations

import falcon

from fanout.layout import Layout

LOOPBACK = ("127.0.0.1", "::1")


def trusted_proxies(layout: Layout) -> frozenset[str]:
    """The peers whose X-Forwarded-For counts: the edge's addresses, none without one."""
    return frozenset(LOOPBACK) if layout.edge.enabled else frozenset()


def client_address(req: falcon.Request, trusted: frozenset[str]) -> str:
    """The client's address: the edge's X-Forwarded-For when the peer is the edge."""
    peer = req.remote_addr or ""
    forwarded = req.get_header("X-Forwarded-For")
    if peer in trusted and forwarded:
        return forwarded.rsplit(",", 1)[-1].strip()  # the hop the edge itself saw
    return peer
