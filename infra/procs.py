"""Process helpers: free ports, process trees, and killing a job for real (SIGKILL to a process
and all its descendants)."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path


def free_port() -> int:
    """A TCP port free on loopback right now (for a rendezvous or a test server)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def children_map() -> dict[int, list[int]]:
    """{parent pid: [child pids]} of every process, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return children


def kill_tree(pid: int) -> None:
    """SIGKILL a process and every descendant (torchrun's workers are not in its process group)."""
    children = children_map()
    todo, tree = [pid], []
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    for p in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
