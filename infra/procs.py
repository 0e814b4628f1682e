"""Process helpers: free ports, process trees, killing a job for real (SIGKILL to a process and
all its descendants), and a process that exits when the one it works for is gone."""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import socket
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

LAUNCHER_PID = "SPACETIME_LAUNCHER_PID"
"""Set by `spacetime launch` for the processes it starts: the pid their workers watch."""


def free_port() -> int:
    """A TCP port free on loopback right now (for a rendezvous or a test server)."""

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


def exit_when_gone(pid: int, what: str) -> None:
    """Exits this process (status 1, at once) as soon as process `pid` has exited. For workers
    whose owner can die without telling them: torchrun starts its workers in sessions of their
    own, so a SIGKILLed launcher leaves them training and writing checkpoints; Ray SIGKILLs its
    workers and leaves their children. Watches through a pidfd (Linux >= 5.3), else polls."""

    def watch() -> None:
        try:
            fd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            while _exists(pid):
                time.sleep(1.0)
        else:
            select.select([fd], [], [])  # readable once the process has exited
        log.error("%s (pid %d) is gone; process %d exits", what, pid, os.getpid())
        logging.shutdown()
        os._exit(1)

    if not _exists(pid):
        os._exit(1)
    threading.Thread(target=watch, name=f"watch-{pid}", daemon=True).start()


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
