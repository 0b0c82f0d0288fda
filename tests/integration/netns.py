"""Stand-in hosts for multi-host tests: network namespaces, each with its own address.

Each host is a network namespace joined to this one by a veth pair on its own /24:
this side is ``10.213.N.1``, the host is ``10.213.N.2``. Processes started in a host see
only its interfaces, so two hosts can both bind ``0.0.0.0:8101`` as two machines would.
Making them needs root (CAP_NET_ADMIN) and iproute2's ``ip``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def why_no_namespaces() -> str | None:
    """None when this process can make network namespaces, else the reason it cannot."""
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    probe = f"fanout-probe-{os.getpid()}"
    try:
        _ip("netns", "add", probe)
    except subprocess.CalledProcessError as error:
        return f"`ip netns add` failed (needs root/CAP_NET_ADMIN): {error.stderr.decode().strip()}"
    _ip("netns", "delete", probe)
    return None


class NetnsHost:
    """One namespace "host" at ``address``; ``cut``/``mend`` unplug and replug its link."""

    def __init__(self, index: int) -> None:
        # Names unique to this test process; interface names have at most 15 characters.
        tag = f"{os.getpid() % 100000}{index}"
        self.name = f"fanout-host-{tag}"
        self.outside, self.inside = f"fo{tag}a", f"fo{tag}b"
        subnet = f"10.213.{(os.getpid() % 120) * 2 + index}"
        self.gateway, self.address = f"{subnet}.1", f"{subnet}.2"
        _ip("netns", "add", self.name)
        try:
            _ip("link", "add", self.outside, "type", "veth", "peer", "name", self.inside)
            _ip("link", "set", self.inside, "netns", self.name)
            _ip("addr", "add", f"{self.gateway}/24", "dev", self.outside)
            _ip("link", "set", self.outside, "up")
            self.inside_ip("addr", "add", f"{self.address}/24", "dev", self.inside)
            self.inside_ip("link", "set", self.inside, "up")
            self.inside_ip("link", "set", "lo", "up")
        except subprocess.CalledProcessError:
            self.remove()
            raise

    def inside_ip(self, *args: str) -> None:
        _ip("netns", "exec", self.name, "ip", *args)

    def start(self, argv: Sequence[str], env: Mapping[str, str],
              log: Path) -> subprocess.Popen[bytes]:
        """Run ``argv`` on this host, in a process group of its own."""
        with log.open("ab") as output:
            return subprocess.Popen(["ip", "netns", "exec", self.name, *argv], env=dict(env),
                                    stdout=output, stderr=subprocess.STDOUT,
                                    start_new_session=True)

    def cut(self) -> None:
        """The host drops off the network, as a machine whose link fails does."""
        self.inside_ip("link", "set", self.inside, "down")

    def mend(self) -> None:
        self.inside_ip("link", "set", self.inside, "up")

    def remove(self) -> None:
        # Deleting the namespace deletes the veth pair with it.
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "delete", self.outside], capture_output=True, timeout=30)
