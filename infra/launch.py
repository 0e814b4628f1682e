"""`spacetime launch`: one command for single-node, per-node (Kubernetes, any scheduler), hostfile
(ssh), Slurm and Ray Train (infra/ray_launch.py, with KubeRay RayJob manifests) launches of `spacetime train` (or `train-vae`), each printed exactly with `--dry-run`.

Every node runs one torchrun with a c10d rendezvous on the master address; torchrun starts
`--nproc-per-node` ranks running `python -m infra.cli train ...`. A node that never joins ends the
rendezvous after `--join-timeout` seconds; a rank that dies ends the others (gloo/NCCL see the
closed sockets); a rank that hangs is ended by the trainer's watchdog (`train.watchdog_s`).
`--max-restarts N` relaunches this node's torchrun with `--resume auto` after a failure: a restart
costs at most the steps since the last checkpoint. (torchrun's own elastic restart is left off: on
two hosts it did not recover, see ../shared/PLATFORM.md.)

Credentials (AWS_*) pass through the environment and are never written into commands or scripts.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from infra.procs import LAUNCHER_PID, free_port

log = logging.getLogger(__name__)


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
        return [*cmd, "-m", "infra.cli", *train_argv]


def shell_line(env: dict[str, str], cmd: list[str]) -> str:
    return " ".join([*(f"{k}={shlex.quote(v)}" for k, v in env.items()), *map(shlex.quote, cmd)])


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


def slurm_script(
    nnodes: int,
    nproc: int,
    run_id: str,
    train_argv: list[str],
    port: int,
    gpus: bool,
    join_timeout_s: int,
) -> str:
    """An sbatch script: one torchrun per node, rendezvous on the allocation's first node.

    Each node's torchrun needs that node's own $SLURM_NODEID, so it runs under `bash -c` in the
    srun task. That inner script is fixed text (numbers and a checked run id only); the training
    arguments reach it as positional parameters ("$@"), quoted exactly once by shlex.join: no
    argument is split, joined or evaluated by any shell on the way.
    """
    inner = " ".join(
        [
            "exec python -m torch.distributed.run",
            '--nnodes="$SLURM_NNODES"',
            f"--nproc-per-node={int(nproc)}",
            '--node-rank="$SLURM_NODEID"',
            "--rdzv-backend=c10d",
            f'--rdzv-endpoint="$MASTER_ADDR:{int(port)}"',
            f"--rdzv-id={check_run_id(run_id)}",
            f"--rdzv-conf=join_timeout={int(join_timeout_s)}",
            "--max-restarts=0",
            '-m infra.cli "$@"',
        ]
    )
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={run_id}",
        f"#SBATCH --nodes={int(nnodes)}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --cpus-per-task={max(1, nproc) * 4}",
        *([f"#SBATCH --gpus-per-node={int(nproc)}"] if gpus else []),
        "#SBATCH --output=%x-%j.out",
        "set -euo pipefail",
        'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        "export MASTER_ADDR",
        "export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}",
        "# AWS_* credentials come from the submitting environment (sbatch exports it); never here.",
        f"srun --kill-on-bad-exit=1 bash -c {shlex.quote(inner)} spacetime-node "
        + shlex.join(train_argv),
    ]
    return "\n".join(lines) + "\n"


def check_run_id(run_id: str) -> str:
    """Run ids name the rendezvous and the Slurm job: plain characters only."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", run_id):
        raise ValueError(f"--run-id {run_id!r}: use letters, digits, '.', '_' and '-' only")
    return run_id


def main(args: argparse.Namespace) -> int:
    train_argv = [a for a in args.rest if a != "--"]
    if not train_argv or train_argv[0] not in ("train", "train-vae"):
        raise ValueError(
            "spacetime launch needs a training command (train or train-vae) after --, "
            "e.g. -- train --config my.yaml"
        )
    run_id = check_run_id(args.run_id or f"spacetime-{int(time.time())}")
    if args.rayjob or args.ray_address:
        return _ray(args, train_argv, run_id)
    if args.slurm:
        port = int(args.master.rsplit(":", 1)[1]) if args.master else 29500
        script = slurm_script(
            args.nnodes or 1,
            args.nproc_per_node,
            run_id,
            train_argv,
            port,
            args.gpus,
            args.join_timeout,
        )
        path = Path(args.slurm_script or f"{run_id}.sbatch")
        if args.dry_run:
            print(script, end="")
            return 0
        path.write_text(script)
        log.info("launch: wrote %s", path)
        if args.submit:
            return subprocess.run(["sbatch", str(path)]).returncode
        return 0
    if args.hostfile:
        hosts = read_hostfile(args.hostfile)
        master = args.master or f"{hosts[0][0]}:29500"
        lines = []
        for rank, (host, slots) in enumerate(hosts):
            node = NodeLaunch(
                len(hosts),
                rank,
                slots or args.nproc_per_node,
                master,
                run_id,
                args.join_timeout,
                None,
                args.iface,
            )
            remote = f"cd {shlex.quote(str(Path.cwd()))} && {shell_line(node.env(), node.command(train_argv))}"
            lines.append(["ssh", "--", host, remote])  # `--`: a host is never an ssh option
        if args.dry_run or args.print_only:
            for cmd in lines:
                print(shlex.join(cmd))
            return 0
        procs = [subprocess.Popen(cmd) for cmd in lines]
        rcs = [p.wait() for p in procs]
        failed = [(h, rc) for (h, _), rc in zip(hosts, rcs, strict=True) if rc != 0]
        for host, rc in failed:  # a negative status: ssh was killed by that signal
            log.error("launch: %s %s", host, f"killed by signal {-rc}" if rc < 0 else f"exit {rc}")
        return 0 if not failed else (failed[0][1] if failed[0][1] > 0 else 128 - failed[0][1])
    nnodes = args.nnodes or 1
    if nnodes > 1 and not args.master:
        raise ValueError("--nnodes > 1 needs --master HOST:PORT (node 0's address)")
    node = NodeLaunch(
        nnodes,
        args.node_rank,
        args.nproc_per_node,
        args.master or f"127.0.0.1:{free_port()}",
        run_id,
        args.join_timeout,
        args.local_addr,
        args.iface,
    )
    if args.dry_run:
        print(shell_line(node.env(), node.command(train_argv)))
        return 0
    return run_node(node, train_argv, args.max_restarts, args.restart_delay)


def _ray(args: argparse.Namespace, train_argv: list[str], run_id: str) -> int:
    from infra.ray_launch import ray_train, rayjob_manifest

    nnodes = args.nnodes or 1
    workers = nnodes * args.nproc_per_node
    if args.rayjob:
        entry = [
            "spacetime",
            "launch",
            "--ray-address",
            "auto",
            "--nnodes",
            str(nnodes),
            "--nproc-per-node",
            str(args.nproc_per_node),
            "--max-restarts",
            str(args.max_restarts),
            *(["--gpus"] if args.gpus else []),
            "--",
            *train_argv,
        ]
        manifest = rayjob_manifest(
            run_id, shlex.join(entry), nnodes, args.nproc_per_node, args.image, args.gpus
        )
        import yaml

        text = yaml.safe_dump(manifest, sort_keys=False)
        if args.dry_run:
            print(text, end="")
        else:
            Path(args.rayjob).write_text(text)
            log.info("launch: wrote %s (kubectl apply -f %s)", args.rayjob, args.rayjob)
        return 0
    if args.dry_run:
        print(
            f"# Ray Train at {args.ray_address}: {workers} workers "
            f"({'1 GPU' if args.gpus else '1 CPU'} each, {'nccl' if args.gpus else 'gloo'}), "
            f"each running:"
        )
        print(shlex.join([sys.executable, "-m", "infra.cli", *train_argv]))
        return 0
    return ray_train(
        train_argv,
        args.ray_address,
        workers,
        args.gpus,
        args.max_restarts,
        args.ray_storage,
        run_id,
        args.join_timeout * 5,
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--nproc-per-node", type=int, default=1, help="ranks per node (GPUs, or CPU processes)"
    )
    p.add_argument("--nnodes", type=int, default=None, help="per-node mode: number of nodes")
    p.add_argument("--node-rank", type=int, default=0, help="per-node mode: this node's rank")
    p.add_argument("--master", default=None, help="HOST:PORT of node 0's rendezvous")
    p.add_argument("--local-addr", default=None, help="this node's address (multi-homed hosts)")
    p.add_argument("--iface", default=None, help="network interface for gloo/NCCL")
    p.add_argument(
        "--hostfile", default=None, help="'host [slots=N]' per line; one torchrun per host over ssh"
    )
    p.add_argument(
        "--print-only", action="store_true", help="hostfile: print the per-host commands"
    )
    p.add_argument(
        "--slurm", action="store_true", help="write an sbatch script (one torchrun per node)"
    )
    p.add_argument("--slurm-script", default=None, help="where to write it (default RUN_ID.sbatch)")
    p.add_argument("--submit", action="store_true", help="slurm: submit it with sbatch")
    p.add_argument("--gpus", action="store_true", help="Slurm, Ray: --nproc-per-node GPUs per node")
    p.add_argument("--run-id", default=None, help="rendezvous id (default: from the time)")
    p.add_argument("--join-timeout", type=int, default=120, help="seconds to wait for all nodes")
    p.add_argument(
        "--max-restarts", type=int, default=0, help="relaunch with --resume auto after a failure"
    )
    p.add_argument(
        "--ray-address",
        default=None,
        help="run under Ray Train on this cluster ('auto': the current one; 'local': start one)",
    )
    p.add_argument("--ray-storage", default="ray_results", help="Ray Train's run state directory")
    p.add_argument("--rayjob", default=None, help="write a KubeRay RayJob manifest to this file")
    p.add_argument("--image", default="spacetime:latest", help="rayjob: container image")
    p.add_argument(
        "--restart-delay",
        type=float,
        default=15.0,
        help="multi-node: seconds to wait before a relaunch (the other nodes fail first)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print exactly what would run; run nothing"
    )
