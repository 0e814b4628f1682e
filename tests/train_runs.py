"""What the training tests share: tiny latent shards, the `spacetime train` command line for one
rank or a torchrun of several, running it, and reading a run's losses and weights back.

Not a test module: tests/conftest.py loads it as a pytest plugin, so its fixtures (`latents`,
`baseline`) reach every test module without an import; the helpers are imported."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, free_port
from tests.faults import fault_env
from tests.latents import write_latent_shards

STEPS = 10
ABORTED = "Aborting so the job can be relaunched"  # trainer/watchdog.py's last words


@pytest.fixture(scope="module")
def latents(tmp_path_factory: pytest.TempPathFactory) -> Path:
    r = random.Random(0)
    shapes = [(4, r.choice([1, 2, 3]), r.choice([4, 6, 8]), r.choice([4, 6, 8])) for _ in range(40)]
    out = tmp_path_factory.mktemp("lat")
    write_latent_shards(out, shapes, per_shard=10)
    return out


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"  # the venv's ninja (PLATFORM.md)
    env["OMP_NUM_THREADS"] = "1"
    env.pop("RANK", None)
    return env | (extra or {})


def _cmd(nproc: int, latents: Path, out: Path, name: str, stage: int, *more: str) -> list[str]:
    args = [
        "train",
        "--preset",
        "tiny",
        "--latents",
        str(latents),
        "--set",
        f"run.output_dir={out}",
        "--set",
        f"run.name={name}",
        "--set",
        f"train.zero_stage={stage}",
        "--set",
        f"train.steps={STEPS}",
        "--set",
        "train.data.token_budget=128",
        "--set",
        "train.data.microbatches_per_step=2",
        "--set",
        "train.checkpoint_every=2",
        "--set",
        "train.log_every=5",
        "--set",
        "train.optim.warmup_steps=3",
        "--set",
        "train.optim.lr=1e-3",
        "--set",
        "train.optim.schedule=cosine",
        "--set",
        "train.data.workers=1",
        "--set",
        "train.peak_tflops=1",
        *more,
    ]
    if nproc == 1:
        return [sys.executable, "-m", "infra.cli", *args]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(nproc),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        "-m",
        "infra.cli",
        *args,
    ]


def _run(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 300) -> str:
    p = subprocess.run(
        cmd, cwd=REPO, env=_env(env), capture_output=True, text=True, timeout=timeout
    )
    if p.returncode != 0:
        # ZeRO-3 ranks have been seen to abort at exit after finishing (PLATFORM.md): say so.
        raise AssertionError(
            f"exit {p.returncode} ({' '.join(cmd[:6])} ...):\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}"
        )
    return p.stdout + p.stderr


def _history(out: Path, name: str) -> list[float]:
    ck = out / name / "checkpoints"
    state = json.loads((ck / (ck / "latest").read_text() / "trainer_state.json").read_text())
    return [h["loss"] for h in state["history"]]


def _weights(out: Path, name: str) -> dict[str, torch.Tensor]:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    ck = out / name / "checkpoints"
    return get_fp32_state_dict_from_zero_checkpoint(str(ck), tag=(ck / "latest").read_text())


@pytest.fixture(scope="module")
def baseline(latents: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One process, ZeRO-2: the reference every multi-rank run is compared with."""
    out = tmp_path_factory.mktemp("runs")
    _run(_cmd(1, latents, out, "single", 2))
    return out, "single"


def _wait_latest(path: Path, tag: str, proc: subprocess.Popen[str], timeout: float = 240) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if path.exists() and path.read_text() >= tag:
            return
        if proc.poll() is not None:
            raise AssertionError(f"training exited ({proc.returncode}) before {tag}")
        time.sleep(0.02)
    raise AssertionError(f"no {tag} within {timeout}s")


def _crash_in_save(cmd: list[str], step: int, point: str = "save:written") -> None:
    """Runs `cmd` with rank 0 SIGKILLing itself at `point` of the save of `step` (tests/faults.py,
    through the trainer's hook object)."""
    p = subprocess.run(
        cmd,
        cwd=REPO,
        env=_env(fault_env(f"{point}@{step}")),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode != 0, p.stderr[-2000:]
