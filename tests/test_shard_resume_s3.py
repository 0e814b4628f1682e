"""`spacetime shard` resumes after kill -9 with identical output, and runs S3 to S3."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import webdataset as wds

from data_pipeline.config import ShardConfig
from data_pipeline.job import run_shard
from infra.provenance import Rerun
from infra.storage import Storage
from infra.storage_config import StorageConfig
from tests.media import moving_frames, write_video

pytestmark = pytest.mark.slow

SETTINGS = {"shard_max_bytes": 60_000, "max_pixels": 160 * 96}


def make_videos(root: Path, n: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    sizes = [(160, 96), (96, 160), (128, 128), (176, 112)]
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        write_video(root / f"v{i:02d}.mp4", moving_frames(w, h, 36 + 6 * i, seed=i))
    return root


def fingerprint(out: Path) -> tuple[list[dict], dict[str, str]]:
    manifest = pq.read_table(out / "manifest.parquet").to_pylist()
    shards = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("clips-*.tar"))
    }
    return manifest, shards


def test_kill_9_then_rerun_matches_uninterrupted_run(tmp_path: Path, local_ray: None) -> None:
    videos = make_videos(tmp_path / "in", 14)
    ref = tmp_path / "ref"
    run_shard(str(videos), str(ref), ShardConfig(**SETTINGS), StorageConfig())
    ref_manifest, ref_shards = fingerprint(ref)
    assert len(ref_shards) >= 3

    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "infra.cli", "shard", "--input", str(videos), "--output", str(out)]
    cmd += [f"--set=shard.{k}={v}" for k, v in SETTINGS.items()]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(
        cmd, start_new_session=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    staging = out / "_work" / "staging"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(list(staging.glob("*.json"))) < 4:
        assert proc.poll() is None, "the job finished before it could be killed"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its Ray processes, as in a crash
    proc.wait()
    staged = len(list(staging.glob("*.json")))
    assert 4 <= staged < 14 and not (out / "summary.json").exists()

    summary = run_shard(str(videos), str(out), ShardConfig(**SETTINGS), StorageConfig())
    assert summary["resumed_sources"] >= staged
    manifest, shards = fingerprint(out)
    assert manifest == ref_manifest
    assert shards == ref_shards
    keys = [r["key"] for r in manifest]
    assert len(keys) == len(set(keys))  # nothing duplicated

    # --overwrite starts over and gives the same bytes again.
    run_shard(
        str(videos), str(out), ShardConfig(**SETTINGS), StorageConfig(), rerun=Rerun(overwrite=True)
    )
    assert fingerprint(out) == (ref_manifest, ref_shards)


def test_s3_in_and_out(tmp_path: Path, s3_server: str, s3_bucket: str, local_ray: None) -> None:
    videos = make_videos(tmp_path / "in", 3)
    (videos / "broken.mp4").write_bytes(b"not a video")
    store = Storage(StorageConfig(s3_endpoint_url=s3_server))
    for p in sorted(videos.iterdir()):
        store.upload(p, f"s3://{s3_bucket}/raw/{p.name}")
    manifest_rows = "".join(
        json.dumps({"path": p.name, "caption": f"clip {p.stem}"}) + "\n"
        for p in sorted(videos.iterdir())
    )
    store.write_text(f"s3://{s3_bucket}/raw/list.jsonl", manifest_rows)

    out = f"s3://{s3_bucket}/clips"
    summary = run_shard(
        f"s3://{s3_bucket}/raw/list.jsonl",
        out,
        ShardConfig(**SETTINGS),
        StorageConfig(s3_endpoint_url=s3_server),
    )
    assert summary["sources"] == 4 and summary["errors"] == 1 and summary["clips"] >= 3
    names = [u.rsplit("/", 1)[-1] for u in store.list(out) if "/_work/" not in u]
    assert {"manifest.parquet", "errors.jsonl", "summary.json"} <= set(names)
    shards = [u for u in store.list(out, suffix=".tar") if "/_work/" not in u]
    assert shards
    got = []
    for uri in shards:
        local = store.download(uri, tmp_path / "dl" / uri.rsplit("/", 1)[-1])
        for s in wds.WebDataset(str(local), shardshuffle=False):
            got.append((s["__key__"], s["txt"].decode()))
    assert len(got) == summary["clips"]
    assert all(
        txt.startswith("clip v") for _, txt in got
    )  # manifest captions carried into {key}.txt
    err = json.loads(store.read_text(f"{out}/errors.jsonl").splitlines()[0])
    assert err["path"].endswith("broken.mp4") and "unreadable" in err["reason"]
