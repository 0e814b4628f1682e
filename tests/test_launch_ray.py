"""`spacetime launch --ray-address`: the training entry under Ray Train (TorchTrainer, gloo, one
worker per CPU slot on a real local Ray cluster) trains the same losses as torchrun, and its
checkpoint is continued by a torchrun launch."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from tests.test_train_deepspeed import _cmd, _history, _run, baseline, latents  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]


def test_ray_train_matches_torchrun_and_resumes_under_torchrun(
    latents: Path,  # noqa: F811
    baseline: tuple[Path, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    train = _cmd(1, latents, tmp_path, "ray", 2, "--set", "train.keep_checkpoints=10")[3:]
    launch = [sys.executable, "-m", "infra.cli", "launch", "--ray-address", "local",
              "--ray-storage", str(tmp_path / "ray"), "--nproc-per-node", "2"]  # fmt: skip
    log = _run([*launch, "--", *train], timeout=400)
    assert "Ray Train run finished" in log and "world 2" in log
    got, ref = _history(tmp_path, "ray"), _history(*baseline)
    assert torch.allclose(torch.tensor(got), torch.tensor(ref), rtol=1e-4, atol=1e-6), (got, ref)

    # torchrun (2 ranks, same world size: bit-exact) continues from Ray's step-6 checkpoint.
    step6 = tmp_path / "ray" / "checkpoints" / "step-00000006"
    resumed = _run(_cmd(2, latents, tmp_path, "ray", 2, "--resume", str(step6)))
    assert "resumed from step-00000006" in resumed
    assert _history(tmp_path, "ray") == got
