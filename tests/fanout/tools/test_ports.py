"""Free ports for the tiers that tools and tests start."""

from __future__ import annotations

import socket

from fanout.tools.ports import _below_ephemeral, free_port


def test_ports_are_free_distinct_and_below_the_ephemeral_range() -> None:
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    assert all(port < _below_ephemeral() for port in ports)
    for port in ports[:5]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # nothing holds it

