"""Held-out validation at fixed timesteps and noise (`train.validation`) under the real DeepSpeed
engine, in real processes: the same numbers on 1 and 2 ranks for the same weights (the same
numbers after a kill -9 and resume: tests/test_long_runs.py)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tests.latents import write_latent_shards
from tests.train_runs import _cmd, _run

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    r = random.Random(0)
    shape = lambda: (4, r.choice([1, 2, 3]), r.choice([4, 6, 8]), r.choice([4, 6, 8]))  # noqa: E731
    out = tmp_path_factory.mktemp("val")
    write_latent_shards(out / "train", [shape() for _ in range(40)], per_shard=10)
    write_latent_shards(out / "held", [shape() for _ in range(5)], per_shard=3, seed=7)
    return out / "train", out / "held"


def _validation(run: Path) -> list[dict]:  # type: ignore[type-arg]
    ck = run / "checkpoints"
    return json.loads((ck / (ck / "latest").read_text() / "trainer_state.json").read_text())[
        "validation"
    ]


def test_validation_is_the_same_on_any_world_size_for_the_same_weights(
    data: tuple[Path, Path], tmp_path: Path
) -> None:
    """lr 1e-30: an update far below fp32 precision, so the weights stay the initial ones and
    1 and 2 ranks (5 clips: 3 + 2 per rank, one padded forward under ZeRO-3) must report identical
    numbers, bit for bit."""
    train, held = data
    val = ["--set", f"train.validation.latents={held}", "--set", "train.validation.every=1"]
    fixed = [*val, "--set", "train.optim.lr=1e-30", "--set", "train.steps=2"]
    _run(_cmd(1, train, tmp_path, "one", 3, *fixed))
    log = _run(_cmd(2, train, tmp_path, "two", 3, *fixed))
    assert "validation at step 1: loss" in log and "over 5 held-out clips" in log
    one, two = _validation(tmp_path / "one"), _validation(tmp_path / "two")
    assert [v["step"] for v in one] == [1, 2] and one == two
    assert len(one[0]["per_t"]) == 8 and one[0]["per_t"][0][0] == 0.0625
    assert one[0]["loss"] == one[1]["loss"]  # nothing changed between the steps
    # Fixed noise and timesteps make the loss a function of t: noisier is not the same as cleaner.
    per_t = [v for _, v in one[0]["per_t"]]
    assert len(set(per_t)) == 8
