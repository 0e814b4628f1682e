"""Hostfile launches (the deepspeed/mpi `host [slots=N]` format): one torchrun per host over ssh."""

from __future__ import annotations

import logging
import re
import shlex
import subprocess
from pathlib import Path

from infra.launch.node import NodeLaunch, shell_line

log = logging.getLogger(__name__)


def read_hostfile(path: str) -> list[tuple[str, int | None]]:
    """`host [slots=N]` per line (the deepspeed/mpi format); # comments."""
    hosts = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if not re.fullmatch(r"[A-Za-z0-9_.:@\[\]-]+", parts[0]) or parts[0].startswith("-"):
            raise ValueError(f"{path}:{n}: {parts[0]!r} is not a host name")
        slots = None
        for p in parts[1:]:
            if not p.startswith("slots="):
                raise ValueError(f"{path}:{n}: expected 'host [slots=N]', got {line!r}")
            slots = int(p.split("=", 1)[1])
        hosts.append((parts[0], slots))
    if not hosts:
        raise ValueError(f"{path}: no hosts")
    return hosts


def hostfile_commands(
    hosts: list[tuple[str, int | None]],
    nproc: int,
    master: str,
    run_id: str,
    join_timeout: int,
    iface: str | None,
    train_argv: list[str],
) -> list[list[str]]:
    """One `ssh -- host 'cd ... && torchrun ...'` per host (`--`: a host is never an ssh option)."""
    lines = []
    for rank, (host, slots) in enumerate(hosts):
        node = NodeLaunch(
            len(hosts), rank, slots or nproc, master, run_id, join_timeout, None, iface
        )
        remote = f"cd {shlex.quote(str(Path.cwd()))} && {shell_line(node.env(), node.command(train_argv))}"
        lines.append(["ssh", "--", host, remote])
    return lines


def run_hostfile(commands: list[list[str]], hosts: list[tuple[str, int | None]]) -> int:
    """Runs every host's command; fails (non-zero) when any host failed, a signal included."""
    procs = [subprocess.Popen(cmd) for cmd in commands]
    rcs = [p.wait() for p in procs]
    failed = [(h, rc) for (h, _), rc in zip(hosts, rcs, strict=True) if rc != 0]
    for host, rc in failed:  # a negative status: ssh was killed by that signal
        log.error("launch: %s %s", host, f"killed by signal {-rc}" if rc < 0 else f"exit {rc}")
    return 0 if not failed else (failed[0][1] if failed[0][1] > 0 else 128 - failed[0][1])
