"""`spacetime launch` (an entry, above the stages): one command for single-node, per-node (Kubernetes, any scheduler), hostfile
(ssh), Slurm and Ray Train (infra/launch/ray_train.py, with KubeRay RayJob manifests) launches of
`spacetime train` (or `train-vae`, or `sample` sequence-parallel over the ranks), each printed
exactly with `--dry-run`.

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
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml

from infra.launch.hostfile import hostfile_commands, read_hostfile, run_hostfile
from infra.launch.node import NodeLaunch, run_node, shell_line
from infra.launch.slurm import check_run_id, slurm_script
from infra.procs import free_port

log = logging.getLogger(__name__)


def main(args: argparse.Namespace) -> int:
    train_argv = [a for a in args.rest if a != "--"]
    if not train_argv or train_argv[0] not in ("train", "train-vae", "sample"):
        raise ValueError(
            "spacetime launch needs a command to run on every rank (train, train-vae, or sample: "
            "sequence-parallel sampling) after --, "
            "e.g. -- train --config my.yaml"
        )
    run_id = check_run_id(args.run_id or _default_run_id(args))
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
        lines = hostfile_commands(
            hosts, args.nproc_per_node, master, run_id, args.join_timeout, args.iface, train_argv
        )
        if args.dry_run or args.print_only:
            for cmd in lines:
                print(shlex.join(cmd))
            return 0
        return run_hostfile(lines, hosts)
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


def _default_run_id(args: argparse.Namespace) -> str:
    """Nodes started one by one (Kubernetes, by hand) must agree on the id without being told: a
    time-based id differed between two nodes started across a second boundary and they never met.
    The master address names the job's rendezvous store, so it is the same on every node."""
    if args.master and not (args.slurm or args.rayjob or args.ray_address):
        return "spacetime-" + re.sub(r"[^A-Za-z0-9._-]+", "-", args.master).strip("-")
    return f"spacetime-{int(time.time())}"


def _ray(args: argparse.Namespace, train_argv: list[str], run_id: str) -> int:
    # Ray (and Ray Train) take seconds to import; only these launches need them.
    from infra.launch.ray_train import ray_train, rayjob_manifest

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
    p.add_argument(
        "--run-id", default=None, help="rendezvous id (default: from --master, else the time)"
    )
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
