"""Slurm launches: an sbatch script with one torchrun per node (srun), rendezvous on the first node."""

from __future__ import annotations

import re
import shlex

from infra.launch.node import ENTRY


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
            f'-m {ENTRY} "$@"',
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
