"""Weighted mixtures of latent sets (`train.data.sources`): proportions per epoch, a pure plan
(resume and world-size changes see the same batches), repeats handed out, and a real run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from infra.storage import Storage
from tests.latents import write_latent_shards
from trainer.config import DataSource
from trainer.data.loader import LatentLoader
from trainer.data.mixture import epoch_entries, mixture_index, shares

REPO = Path(__file__).resolve().parents[1]
SHAPES = [(4, 2, 4, 4), (4, 1, 4, 6), (4, 3, 2, 4), (4, 2, 6, 4)]


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("mix")
    write_latent_shards(d / "big", [SHAPES[i % 4] for i in range(200)], per_shard=20, seed=1)
    write_latent_shards(d / "small", [SHAPES[i % 4] for i in range(60)], per_shard=20, seed=2)
    return {"big": d / "big", "small": d / "small"}


def _index(sets: dict[str, Path], wb: float = 1.0, ws: float = 3.0):  # type: ignore[no-untyped-def]
    return mixture_index(
        [DataSource(str(sets["big"]), wb), DataSource(str(sets["small"]), ws)], Storage()
    )


def _loader(index, rank: int = 0, world: int = 1) -> LatentLoader:  # type: ignore[no-untyped-def]
    return LatentLoader(
        index,
        Storage(),
        rank=rank,
        world_size=world,
        seed=7,
        patch=(1, 2, 2),
        token_budget=48,
        microbatches_per_step=2,
        shuffle_shards=2,
        workers=0,
        hidden=64,
    )


def test_shares_add_up_and_follow_the_weights() -> None:
    assert shares([1, 3], 52) == [13, 39]
    assert sum(shares([0.2, 0.3, 0.5], 101)) == 101
    assert shares([1, 0], 10) == [10, 0]


def test_each_epoch_draws_the_weighted_proportions(sets: dict[str, Path]) -> None:
    index = _index(sets)
    assert index.names == ["big", "small"] and len(index.entries) == 260
    seen_big: list[int] = []
    for epoch in range(3):
        chosen = epoch_entries(index, epoch, seed=7)
        by_source = Counter(index.source_of[i] for i in chosen)  # type: ignore[index]
        assert by_source == {0: 65, 1: 195}
        seen_big += [i for i in chosen if index.source_of[i] == 0]  # type: ignore[index]
        # through the real plan (packing, whole steps only): still within 2% of 75%
        plan = _loader(index).plan(epoch)
        planned = [i for step in plan.steps for mb in step for i in mb]
        small = sum(index.source_of[i] for i in planned) / len(planned)  # type: ignore[index]
        assert abs(small - 0.75) <= 0.02, small
        assert not Counter(planned) - Counter(chosen)  # the plan uses what was drawn
    # the big source is gone through in a fresh order: 195 draws over 3 epochs, no repeat
    assert len(seen_big) == len(set(seen_big)) == 195
    assert epoch_entries(index, 1, seed=7) == epoch_entries(index, 1, seed=7)
    assert epoch_entries(index, 1, seed=7) != epoch_entries(index, 1, seed=8)


def _keys(step) -> list[list[tuple[str, float]]]:  # type: ignore[no-untyped-def]
    return [[(s.key, round(float(s.latent.sum()), 4)) for s in mb] for mb in step.microbatches]


def test_a_resumed_or_resized_mixture_sees_the_same_global_batches(sets: dict[str, Path]) -> None:
    index = _index(sets)
    steps = len(_loader(index).plan(0).steps)
    whole = []
    for step in _loader(index).iterate(0, 0):
        whole.append(((step.epoch, step.step_in_epoch), _keys(step)))
        if len(whole) == steps + 4:  # into the second epoch
            break
    resumed = []
    for step in _loader(index).iterate(0, 3):
        resumed.append(((step.epoch, step.step_in_epoch), _keys(step)))
        if len(resumed) == len(whole) - 3:
            break
    assert resumed == whole[3:]
    # two ranks: each step's micro-batches together are the one-rank step's
    ranks = [_loader(index, r, 2).iterate(0, 0) for r in range(2)]
    for _, one in whole[:steps]:
        parts = [next(it) for it in ranks]
        both = sorted(mb for p in parts for mb in _keys(p))
        assert both == sorted(one)
    # repeats of the small source (195 draws of 60 samples per epoch) are read once, handed out
    # as often as planned
    drawn = Counter(k for _, mbs in whole[:steps] for mb in mbs for k in mb)
    assert max(drawn.values()) >= 3


def test_train_on_a_mixture_from_the_command_line(sets: dict[str, Path], tmp_path: Path) -> None:
    sources = (
        f"train.data.sources=[{{latents: {sets['big']}, weight: 1}}, "
        f"{{latents: {sets['small']}, weight: 3, name: small}}]"
    )
    common = [
        sys.executable, "-m", "infra.cli", "train", "--preset", "tiny", "--set", sources,
        "--set", f"run.output_dir={tmp_path}", "--set", "train.data.token_budget=64",
        "--set", "train.steps=3", "--set", "train.zero_stage=0", "--set", "train.log_every=1",
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO))
    dry = subprocess.run(
        [*common, "--dry-run"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert dry.returncode == 0, dry.stderr[-3000:]
    report = json.loads(dry.stdout[dry.stdout.index("{") :])
    mixture = {m["name"]: m for m in report["packing"]["mixture"]}
    assert mixture["big"]["drawn_per_epoch"] == 65 and mixture["small"]["drawn_per_epoch"] == 195
    run = subprocess.run(common, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "step 3/3" in run.stdout + run.stderr
