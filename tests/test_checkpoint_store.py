"""The checkpoint store on its own (a world of one): S3 caches made whole, every node's cache kept
to N, unsafe keys refused, RNG states without pickle, damaged state files named, resume checks."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from infra.errors import JobError
from infra.storage import Storage
from infra.storage_config import StorageConfig
from infra.uris import UnsafeKey
from trainer.checkpoint import (
    CheckpointStore,
    check_resume,
    local_run_dir,
    read_state,
)
from trainer.config import RESUME_FIXED
from trainer.engine import distributed
from trainer.rng import load_rank_files, save_rank_files


def _write_tag(root: Path, tag: str, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / tag / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / tag / rel).write_text(text)


def test_a_nodes_partial_cache_is_completed_from_s3(
    tmp_path: Path, s3_server: str, s3_bucket: str
) -> None:
    storage = Storage(StorageConfig(s3_endpoint_url=s3_server))
    remote = f"s3://{s3_bucket}/run/checkpoints"
    whole = {"trainer_state.json": "{}", "zero/rank0.pt": "r0", "zero/rank1.pt": "r1"}
    for rel, text in whole.items():
        storage.write_text(f"{remote}/step-00000004/{rel}", text)
    # Node 0's cache after a 2-node save: its own rank's files and the state, not rank 1's.
    _write_tag(tmp_path, "step-00000004", {"trainer_state.json": "{}", "zero/rank0.pt": "r0"})
    with distributed():
        store = CheckpointStore(tmp_path, remote, storage, rank=0)
        path = store.fetch("step-00000004", local_rank=0)
    got = {str(p.relative_to(path)): p.read_text() for p in path.rglob("*") if p.is_file()}
    assert got == whole


def test_an_object_key_that_climbs_out_is_refused(
    tmp_path: Path, s3_server: str, s3_bucket: str
) -> None:
    storage = Storage(StorageConfig(s3_endpoint_url=s3_server))
    remote = f"s3://{s3_bucket}/run/checkpoints"
    storage.write_text(f"{remote}/step-00000002/trainer_state.json", "{}")
    storage.s3.put_object(
        Bucket=s3_bucket, Key="run/checkpoints/step-00000002/../../../../escaped", Body=b"x"
    )
    with distributed(), pytest.raises(UnsafeKey, match=r"refusing the key '\.\./"):
        CheckpointStore(tmp_path / "c", remote, storage, rank=0).fetch("step-00000002", 0)
    assert not list(tmp_path.rglob("escaped"))


def test_every_node_keeps_only_the_newest_checkpoints(
    tmp_path: Path, s3_server: str, s3_bucket: str
) -> None:
    storage = Storage(StorageConfig(s3_endpoint_url=s3_server))
    remote = f"s3://{s3_bucket}/run/checkpoints"
    node1 = tmp_path / "node1"  # the cache of a second node: not rank 0, its own first rank
    with distributed():
        store = CheckpointStore(node1, remote, storage, rank=1)
        for step in range(1, 6):
            tag = f"step-{step:08d}"
            _write_tag(node1, tag + ".partial-x", {"zero/rank1.pt": str(step)})
            store.publish(node1 / f"{tag}.partial-x", keep=2, local_rank=0)
    assert sorted(p.name for p in node1.iterdir()) == ["step-00000004", "step-00000005"]


def test_s3_run_dirs_never_share_a_cache_folder(tmp_path: Path) -> None:
    a = local_run_dir("s3://b/a_b", "run", str(tmp_path))
    b = local_run_dir("s3://b/a/b", "run", str(tmp_path))
    c = local_run_dir("s3://b/a", "b_run", str(tmp_path))
    assert len({a, b, c}) == 3
    assert a == local_run_dir("s3://b/a_b", "run", str(tmp_path))  # stable across processes


def test_rng_states_round_trip_without_pickle(tmp_path: Path) -> None:
    torch.manual_seed(3)
    np.random.seed(4)
    random.seed(5)
    save_rank_files(tmp_path, 0)
    want = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    assert load_rank_files(tmp_path, 0)
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], want[0]) and np.array_equal(got[1], want[1]) and got[2] == want[2]
    assert not list(tmp_path.glob("*.pt")) and not load_rank_files(tmp_path, 1)


def test_a_damaged_trainer_state_is_named(tmp_path: Path) -> None:
    (tmp_path / "trainer_state.json").write_text('{"step": 4, "wor')
    with pytest.raises(JobError, match=r"trainer_state.json: unreadable .* damaged"):
        read_state(tmp_path)
    (tmp_path / "trainer_state.json").unlink()
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        read_state(tmp_path)


def test_resume_refuses_settings_that_change_the_batches() -> None:
    then = {"train": {"data": {"token_budget": 128, "workers": 1}, "steps": 10}, "seed": 0}
    check_resume(then, then | {"train": then["train"] | {"steps": 20}}, RESUME_FIXED, "ck")
    now = json.loads(json.dumps(then))
    now["train"]["data"]["workers"] = 2  # reader processes do not change the batches
    check_resume(then, now, RESUME_FIXED, "ck")
    for change in ({"seed": 1}, {"train": {**now["train"], "data": {"token_budget": 64}}}):
        with pytest.raises(JobError, match="cannot resume with other settings"):
            check_resume(then, now | change, RESUME_FIXED, "ck")
