"""The data plan and loader: every sample once per epoch across ranks, balanced ranks, positions
that resume exactly, shards from local folders and S3."""

from __future__ import annotations

import itertools
import random
from collections import Counter
from pathlib import Path

import pytest

from infra.storage import Storage
from infra.storage_config import StorageConfig
from tests.latents import write_latent_shards
from trainer.data.loader import LatentLoader
from trainer.data.plan import assign_ranks, load_index, sample_cost, tokens_of

PATCH = (1, 2, 2)


def _shapes(n: int, seed: int = 0) -> list[tuple[int, int, int, int]]:
    r = random.Random(seed)
    return [
        (4, r.choice([1, 2, 3]), r.choice([4, 6, 8, 12]), r.choice([4, 6, 8])) for _ in range(n)
    ]


def _loader(index, storage, rank: int, world: int, g: int = 6, workers: int = 0) -> LatentLoader:  # type: ignore[no-untyped-def]
    return LatentLoader(
        index,
        storage,
        rank=rank,
        world_size=world,
        seed=3,
        patch=PATCH,
        token_budget=160,
        microbatches_per_step=g,
        shuffle_shards=2,
        workers=workers,
        hidden=64,
    )


@pytest.fixture(scope="module")
def latents(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    out = tmp_path_factory.mktemp("lat")
    keys = write_latent_shards(out, _shapes(90), per_shard=12)
    return out, keys


@pytest.mark.parametrize("world", [1, 2, 3])
def test_every_sample_once_per_epoch_across_ranks(
    latents: tuple[Path, list[str]], world: int
) -> None:
    out, keys = latents
    storage = Storage()
    index = load_index(str(out), storage)
    seen: Counter[str] = Counter()
    per_step: dict[int, set[str]] = {}  # global batch of each step, gathered from every rank
    largest = 0
    for rank in range(world):
        loader = _loader(index, storage, rank, world, workers=1 if rank == 0 else 0)
        plan = loader.plan(0)
        for data in loader.iterate(0, 0):
            if data.epoch > 0:
                break
            assert len(data.microbatches) == 6 // world
            for mb in data.microbatches:
                assert (
                    sum(tokens_of(tuple(s.latent.shape), PATCH) for s in mb) <= 160 or len(mb) == 1
                )
                seen.update(s.key for s in mb)
                per_step.setdefault(data.step_in_epoch, set()).update(s.key for s in mb)
                largest = max(largest, len(mb))
    assert max(seen.values()) == 1
    # Only the last < G micro-batches of the epoch may be dropped.
    assert 0 <= plan.dropped_samples <= (6 - 1) * largest
    assert len(seen) + plan.dropped_samples == len(keys)
    # The global batches are the same whatever the world size: compare their contents with the
    # one-rank plan's, step by step.
    one = _loader(index, storage, 0, 1).plan(0)
    keys_of = [e.key for e in index.entries]
    want = {s: {keys_of[i] for mb in step for i in mb} for s, step in enumerate(one.steps)}
    assert per_step == want


def test_epochs_reshuffle_and_positions_resume_exactly(latents: tuple[Path, list[str]]) -> None:
    out, _ = latents
    storage = Storage()
    index = load_index(str(out), storage)
    loader = _loader(index, storage, 1, 2)
    p0, p1 = loader.plan(0), loader.plan(1)
    assert p0.steps != p1.steps
    assert p0.steps == _loader(index, storage, 1, 2).plan(0).steps  # deterministic
    full = [
        ([s.key for mb in d.microbatches for s in mb], d.epoch)
        for d in itertools.islice(loader.iterate(0, 0), 9)
    ]
    # Restart from the position after 4 steps (what a checkpoint stores): the same stream follows.
    pos = (full[4][1], 4 % len(p0.steps)) if full[4][1] == 0 else (1, 4 - len(p0.steps))
    resumed = [
        ([s.key for mb in d.microbatches for s in mb], d.epoch)
        for d in itertools.islice(loader.iterate(*pos), 5)
    ]
    assert resumed == full[4:9]


def test_ranks_balanced_by_cost() -> None:
    r = random.Random(1)
    lengths = [r.choice([16, 64, 256, 1024, 4096]) for _ in range(64)]
    costs = [sample_cost(n, 384) for n in lengths]
    split = assign_ranks(costs, 4)
    assert sorted(m for part in split for m in part) == list(range(64))
    assert all(len(part) == 16 for part in split)
    loads = [sum(costs[m] for m in part) for part in split]
    assert max(loads) / min(loads) < 1.05
    # A naive round-robin split of the same micro-batches is far less even.
    naive = [sum(costs[m] for m in range(k, 64, 4)) for k in range(4)]
    assert max(naive) / min(naive) > max(loads) / min(loads)
    with pytest.raises(ValueError, match="divisible"):
        assign_ranks(costs[:6], 4)


def test_index_is_rebuilt_by_scanning_when_missing(tmp_path: Path) -> None:
    write_latent_shards(tmp_path / "a", _shapes(20), per_shard=7, index=True)
    write_latent_shards(tmp_path / "b", _shapes(20), per_shard=7, index=False)
    a, b = load_index(str(tmp_path / "a"), Storage()), load_index(str(tmp_path / "b"), Storage())
    assert a.entries == b.entries and a.fingerprint() == b.fingerprint()


def test_missing_sample_names_the_shard(tmp_path: Path) -> None:
    import json

    write_latent_shards(tmp_path, _shapes(12), per_shard=12)
    idx = tmp_path / "latents-000000.index.json"
    rows = json.loads(idx.read_text())
    rows.append({**rows[0], "key": "ghost"})
    idx.write_text(json.dumps(rows))
    loader = _loader(load_index(str(tmp_path), Storage()), Storage(), 0, 1, g=1)
    with pytest.raises(FileNotFoundError, match=r"latents-000000.tar: 1 samples .*ghost"):
        list(itertools.islice(loader.iterate(0, 0), 20))


def test_loader_reads_s3_shards(tmp_path: Path, s3_server: str, s3_bucket: str) -> None:
    keys = write_latent_shards(tmp_path, _shapes(30), per_shard=10)
    storage = Storage(StorageConfig(s3_endpoint_url=s3_server))
    for f in sorted(tmp_path.iterdir()):
        storage.upload(f, f"s3://{s3_bucket}/lat/{f.name}")
    index = load_index(f"s3://{s3_bucket}/lat", storage)
    loader = _loader(index, storage, 0, 1, g=2, workers=2)
    got = []
    for data in loader.iterate(0, 0):
        if data.epoch:
            break
        got += [s.key for mb in data.microbatches for s in mb]
    assert len(got) == len(set(got)) and len(got) + loader.plan(0).dropped_samples == len(keys)
