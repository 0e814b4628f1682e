"""Fine-tuning (`spacetime train --init`) under the real DeepSpeed engine, in real processes: a new
run starts from another run's EMA or raw weights on any ZeRO stage, and refuses weights of
another model."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.test_long_runs import _ema, _equal, _weights
from tests.train_runs import _cmd, _env, _run

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]

FROZEN = (
    "--set",
    "train.optim.lr=1e-30",
    "--set",
    "train.steps=2",
)  # lr 1e-30: below fp32 precision, the weights stay put


def test_init_starts_a_new_run_from_the_weights_of_another(latents: Path, tmp_path: Path) -> None:
    _run(_cmd(1, latents, tmp_path, "base", 2, "--set", "train.steps=4"))
    base = tmp_path / "base"
    # ZeRO-3 on 2 ranks from the base run's EMA (the default), learning rate 1e-30.
    log = _run(_cmd(2, latents, tmp_path, "ft", 3, *FROZEN, "--init", str(base)))
    assert "initialised from" in log and "(EMA)" in log
    assert _equal(_weights(tmp_path / "ft", 2), _ema(base, 4))
    assert not _equal(_ema(base, 4), _weights(base, 4))  # so the two cases below differ
    # The raw weights of a named checkpoint, ZeRO-0.
    ckpt = base / "checkpoints" / "step-00000004"
    raw = ("--set", "train.init_weights=model", "--init", str(ckpt))
    _run(_cmd(1, latents, tmp_path, "ft_raw", 0, *FROZEN, *raw))
    assert _equal(_weights(tmp_path / "ft_raw", 2), _weights(base, 4))
    # It trains from there: with a learning rate the weights move away.
    _run(_cmd(1, latents, tmp_path, "ft_lr", 2, "--set", "train.steps=2", "--init", str(base)))
    moved = _weights(tmp_path / "ft_lr", 2)
    assert not _equal(moved, _ema(base, 4))
    assert max((moved[k] - _ema(base, 4)[k]).abs().max().item() for k in moved) < 0.1

    # Weights of another model: refused by name, before any step.
    other = _cmd(
        1, latents, tmp_path, "bad", 2, "--set", "train.model.size=XS", "--init", str(base)
    )
    p = subprocess.run(other, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode != 0 and "not this model's weights" in p.stderr, p.stderr[-2000:]
    assert not (tmp_path / "bad" / "checkpoints" / "latest").exists()
