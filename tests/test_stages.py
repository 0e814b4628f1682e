"""Training stages (`train.stages`): the recipe table, limits, learning rate per stage, and real
DeepSpeed runs: kill -9 inside a stage then `--resume auto` is bit-exact, and a run resumed on
fewer ranks before a stage boundary crosses it on the same global batches."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from infra.procs import kill_tree
from infra.storage import Storage
from tests.latents import write_latent_shards
from tests.train_runs import _cmd, _env, _history, _run, _wait_latest
from trainer.config import DataSource, StageConfig, TrainConfig
from trainer.data.plan import load_index
from trainer.data.stages import STAGE_EPOCHS, StagedLoader, limit
from trainer.engine import lr_lambda
from trainer.stage_config import latent_sets, stage_at, stages

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("stages")
    r = random.Random(0)
    low = [(4, r.choice([1, 2]), 4, 4) for _ in range(40)]
    high = [(4, r.choice([1, 2, 3]), r.choice([6, 8]), r.choice([6, 8])) for _ in range(40)]
    write_latent_shards(d / "low", low, per_shard=10, seed=1)
    write_latent_shards(d / "high", high, per_shard=10, seed=2)
    return {"low": d / "low", "high": d / "high"}


def _stage_cfg(data: dict[str, Path]) -> TrainConfig:
    cfg = TrainConfig(steps=10)
    cfg.data.latents = str(data["low"])
    cfg.optim.lr = 1e-3
    cfg.stages = [
        StageConfig(start=4, name="high", latents=str(data["high"]), token_budget=256, lr=5e-4),
        StageConfig(start=7, name="short", max_latent_frames=2),
    ]
    return cfg


def test_the_stage_table_resolves_each_stage_on_the_previous(data: dict[str, Path]) -> None:
    cfg = _stage_cfg(data)
    cfg.validate()
    st = stages(cfg)
    assert [s.start for s in st] == [0, 4, 7]
    assert [s.data.latents for s in st] == [str(data["low"]), str(data["high"]), str(data["high"])]
    assert [s.data.token_budget for s in st] == [4096, 256, 256]
    assert [s.lr for s in st] == [1e-3, 5e-4, 5e-4]
    assert [stage_at(cfg, n) for n in (0, 3, 4, 6, 7, 9)] == [0, 0, 1, 1, 2, 2]
    # the schedule's shape times the stage's own peak (constant schedule, 2 warm-up steps)
    cfg.optim.warmup_steps, cfg.optim.schedule = 2, "constant"
    f = lr_lambda(cfg)
    assert [f(n) * cfg.optim.lr for n in (0, 1, 3, 4, 8)] == pytest.approx(
        [5e-4, 1e-3, 1e-3, 5e-4, 5e-4]
    )
    index, skipped = limit(load_index(str(data["high"]), Storage()), st[2])
    assert skipped == sum(
        1 for e in load_index(str(data["high"]), Storage()).entries if e.shape[1] > 2
    )
    assert skipped > 0 and all(e.shape[1] <= 2 for e in index.entries)
    with pytest.raises(ValueError, match="starts must be"):
        TrainConfig(stages=[StageConfig(start=5), StageConfig(start=5)]).validate()


def test_a_runs_latent_sets_are_read_from_its_resolved_stages() -> None:
    """What sampling checks a run's text encoder against: every stage's data, each set once, and
    a stage's mixture replaces its latents (so a `latents` beside `sources` is not trained on)."""
    cfg = TrainConfig()
    cfg.data.latents = "s3://b/low"
    cfg.stages = [
        StageConfig(
            start=4,
            latents="s3://b/unused",
            sources=[DataSource(latents="s3://b/mix-a"), DataSource(latents="s3://b/low")],
        ),
        StageConfig(start=7, latents="s3://b/high"),
    ]
    assert latent_sets(cfg) == ["s3://b/low", "s3://b/mix-a", "s3://b/high"]
    assert latent_sets(TrainConfig()) == []


def test_a_staged_loader_numbers_each_stages_epochs_apart(data: dict[str, Path]) -> None:
    from trainer.data.loader import build_loader, training_index

    cfg = _stage_cfg(data)
    cfg.model.patch = (1, 2, 2)
    staged = StagedLoader(
        cfg,
        Storage(),
        lambda c, idx: build_loader(c, idx, Storage(), 0, 1, 0, False),
        training_index(cfg.data, Storage()),
    )
    first = next(staged.iterate(STAGE_EPOCHS * 2 + 1, 0))
    assert first.epoch == STAGE_EPOCHS * 2 + 1 and first.step_in_epoch == 0
    keys = {s.key for mb in first.microbatches for s in mb}
    assert keys and staged.loader(2).budget == 256
    # stage 2 keeps only short samples: every latent it hands out has <= 2 frames
    assert all(s.latent.shape[1] <= 2 for mb in first.microbatches for s in mb)


def _stage_args(data: dict[str, Path]) -> list[str]:
    stages_set = (
        f"train.stages=[{{start: 4, name: high, latents: {data['high']}, token_budget: 192, "
        f"lr: 5e-4}}, {{start: 7, name: short, max_latent_frames: 2}}]"
    )
    return ["--set", stages_set, "--set", "train.keep_checkpoints=20"]


def test_kill_9_mid_stage_and_a_smaller_resume_across_a_boundary(
    data: dict[str, Path], tmp_path: Path
) -> None:
    more = _stage_args(data)
    straight = _run(_cmd(2, data["low"], tmp_path, "straight", 2, *more))
    assert "stage 1 (high) from step 5" in straight and "stage 2 (short) from step 8" in straight
    ref = _history(tmp_path, "straight")
    assert len(ref) == 10

    # kill -9 inside stage 1 (after step 6's checkpoint), resume: bit-exact
    cmd = _cmd(2, data["low"], tmp_path, "killed", 2, *more)
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    latest = tmp_path / "killed" / "checkpoints" / "latest"
    _wait_latest(latest, "step-00000006", proc)
    kill_tree(proc.pid)
    proc.wait()
    killed_at = latest.read_text()
    assert killed_at < "step-00000010", "the kill came too late to test anything"
    log = _run([*cmd, "--resume", "auto"])
    assert f"resumed from {killed_at}" in log
    assert _history(tmp_path, "killed") == ref

    # 2 ranks -> 1 rank from step 2's checkpoint (stage 0), across both boundaries
    shrink = tmp_path / "shrink" / "checkpoints"
    shrink.mkdir(parents=True)
    shutil.copytree(
        tmp_path / "straight" / "checkpoints" / "step-00000002", shrink / "step-00000002"
    )
    (shrink / "latest").write_text("step-00000002")
    log = _run([*_cmd(1, data["low"], tmp_path, "shrink", 2, *more), "--resume", "auto"])
    assert "resumed from step-00000002" in log and "stage 2 (short) from step 8" in log
    got = _history(tmp_path, "shrink")
    assert torch.allclose(torch.tensor(got), torch.tensor(ref), rtol=1e-4, atol=1e-6), (got, ref)

    # the dry run prints the stage table
    dry = subprocess.run(
        [*_cmd(1, data["low"], tmp_path, "dry", 2, *more), "--dry-run"],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert dry.returncode == 0, dry.stderr[-3000:]
    table = json.loads(dry.stdout[dry.stdout.index("{") :])["stages"]
    assert [(s["name"], s["from_step"], s["token_budget"]) for s in table] == [
        ("base", 1, 128), ("high", 5, 192), ("short", 8, 192)
    ]  # fmt: skip
    assert table[2]["skipped_by_limits"] > 0 and table[1]["skipped_by_limits"] == 0
