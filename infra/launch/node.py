"""One node's share of a launch: its torchrun command (c10d rendezvous on node 0), run with its
output passed through, relaunched with --resume auto after a failure (`--max-restarts`).

torchrun starts `--nproc-per-node` ranks, each running `python -m infra.cli train ...` (ENTRY). A
node that never joins ends the rendezvous after the join timeout; a rank that dies ends the others
(gloo/NCCL see the closed sockets); a rank that hangs is ended by the trainer's watchdog. torchrun's
own elastic restart is left off: on two hosts it did not recover (../shared/PLATFORM.md).
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from infra.procs import LAUNCHER_PID

log = logging.getLogger(__name__)

ENTRY = "infra.cli"
"""The module every rank runs (`python -m infra.cli ...`), under torchrun and under Ray alike."""


@dataclass
class NodeLaunch:
    nnodes: int
    node_rank: int
    nproc_per_node: int
    master: str
    """host:port of the rendezvous (served by node 0)."""
    run_id: str
    join_timeout_s: int = 120
    local_addr: str | None = None
    iface: str | None = None

    def env(self) -> dict[str, str]:
        """Variables this node's processes need besides the caller's environment."""
        env = {
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")
            or str(max(1, (os.cpu_count() or 1) // self.nproc_per_node))
        }
        if self.iface:
            env |= {"GLOO_SOCKET_IFNAME": self.iface, "NCCL_SOCKET_IFNAME": self.iface}
        return env

    def command(self, train_argv: list[str]) -> list[str]:
        is_host = 1 if self.node_rank == 0 else 0
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nnodes={self.nnodes}",
            f"--nproc-per-node={self.nproc_per_node}",
            f"--node-rank={self.node_rank}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={self.master}",
            f"--rdzv-id={self.run_id}",
            f"--rdzv-conf=join_timeout={self.join_timeout_s},is_host={is_host}",
            "--max-restarts=0",
        ]
        if self.local_addr:
            cmd.append(f"--local-addr={self.local_addr}")
        return [*cmd, "-m", ENTRY, *train_argv]


def shell_line(env: dict[str, str], cmd: list[str]) -> str:
    return " ".join([*(f"{k}={shlex.quote(v)}" for k, v in env.items()), *map(shlex.quote, cmd)])


def with_resume(train_argv: list[str]) -> list[str]:
    if "--resume" in train_argv:
        i = train_argv.index("--resume")
        return [*train_argv[:i], "--resume", "auto", *train_argv[i + 2 :]]
    return [*train_argv, "--resume", "auto"]


def run_teed(cmd: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Runs `cmd` with its output passed through as it comes (progress bars included) and returns
    (exit status, the last 64 KiB of that output) so failures can be explained."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    tail = b""
    out = sys.stdout.buffer
    while chunk := os.read(proc.stdout.fileno(), 65536):
        out.write(chunk)
        out.flush()
        tail = (tail + chunk)[-65536:]
    return proc.wait(), tail.decode(errors="replace")


def run_node(
    node: NodeLaunch, train_argv: list[str], max_restarts: int, restart_delay_s: float = 0.0
) -> int:
    """Runs this node's torchrun; on failure relaunches it (resuming) up to max_restarts times,
    after `restart_delay_s`: long enough for every other node's torchrun to have failed too, so a
    relaunched node never joins the old round's rendezvous store just before it closes."""
    env = dict(os.environ) | node.env()
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env[LAUNCHER_PID] = str(os.getpid())  # the workers exit when this process is gone
    argv = train_argv
    for attempt in range(max_restarts + 1):
        cmd = node.command(argv)
        log.info(
            "launch: node %d/%d attempt %d: %s",
            node.node_rank,
            node.nnodes,
            attempt + 1,
            shell_line(node.env(), cmd),
        )
        t0 = time.monotonic()
        rc, tail = run_teed(cmd, env)
        if rc == 0:
            log.info("launch: node %d finished in %.0fs", node.node_rank, time.monotonic() - t0)
            return 0
        if "RendezvousTimeoutError" in tail or "RendezvousConnectionError" in tail:
            log.error(
                "launch: not every node joined: the rendezvous at %s (run id %s) still missed "
                "nodes after %ds; this is node %d of %d. Start every node with the same --master, "
                "--run-id and --nnodes, and check that each can reach %s.",
                node.master,
                node.run_id,
                node.join_timeout_s,
                node.node_rank,
                node.nnodes,
                node.master,
            )
        log.error(
            "launch: node %d failed with exit %d after %.0fs%s",
            node.node_rank,
            rc,
            time.monotonic() - t0,
            "; relaunching from the latest checkpoint" if attempt < max_restarts else "",
        )
        argv = with_resume(train_argv)
        if attempt < max_restarts and node.nnodes > 1:
            time.sleep(restart_delay_s)
    return rc
