"""Two test hosts on one machine: network namespaces joined by a veth pair (needs root).

Addresses are private and exist only inside the two namespaces; nothing is routed out.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator


def can_make_namespaces() -> str | None:
    """None if namespaces can be made here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class TwoHosts:
    def __init__(self) -> None:
        tag = f"{os.getpid() % 10000:04d}"
        self.ns = (f"st{tag}a", f"st{tag}b")
        self.veth = (f"st{tag}va", f"st{tag}vb")
        subnet = 10 + os.getpid() % 200
        self.addr = (f"10.213.{subnet}.1", f"10.213.{subnet}.2")

    def up(self) -> None:
        for ns in self.ns:
            _ip("netns", "add", ns)
        _ip("link", "add", self.veth[0], "type", "veth", "peer", "name", self.veth[1])
        for ns, veth, addr in zip(self.ns, self.veth, self.addr, strict=True):
            _ip("link", "set", veth, "netns", ns)
            _ip("netns", "exec", ns, "ip", "addr", "add", f"{addr}/24", "dev", veth)
            _ip("netns", "exec", ns, "ip", "link", "set", veth, "up")
            _ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")

    def down(self) -> None:
        for ns in self.ns:
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("netns", "del", ns)

    def cmd(self, host: int, argv: list[str]) -> list[str]:
        """`argv` run inside host 0 or 1."""
        return ["ip", "netns", "exec", self.ns[host], *argv]


@contextlib.contextmanager
def two_hosts() -> Iterator[TwoHosts]:
    hosts = TwoHosts()
    hosts.down()
    hosts.up()
    try:
        yield hosts
    finally:
        hosts.down()
