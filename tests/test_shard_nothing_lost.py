"""`spacetime shard` loses nothing and reuses nothing stale: same names in two folders, a source
that fails part-way, --overwrite with a relative output, retries, changed inputs, all-failed runs."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import webdataset as wds

from data_pipeline import process, records, worker
from data_pipeline.config import ShardConfig
from data_pipeline.probe import InputError
from data_pipeline.sources import Source, list_sources
from infra.cli import main
from infra.storage import Storage
from infra.storage_config import StorageConfig
from tests.conftest import REPO
from tests.media import moving_frames, write_video

pytestmark = pytest.mark.slow

SMALL = ["--set", "shard.max_pixels=12288", "--set", "shard.min_side=32"]


def camera_folders(root: Path) -> Path:
    """Two folders that both hold x.mp4 (as camera cards do), and one file at the top."""
    for i, rel in enumerate(["a/x.mp4", "b/x.mp4", "y.mp4"]):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        write_video(root / rel, moving_frames(96, 64, 30, seed=i))
    return root


def shard_contents(out: Path) -> dict[str, str]:
    """{key: sha256 of its mp4} read from the tars themselves."""
    got = {}
    for tar in sorted(out.glob("clips-*.tar")):
        for s in wds.WebDataset(str(tar), shardshuffle=False):
            got[s["__key__"]] = hashlib.sha256(s["mp4"]).hexdigest()
    return got


def manifest(out: Path) -> dict[str, str]:
    return {r["key"]: r["sha256"] for r in pq.read_table(out / "manifest.parquet").to_pylist()}


def test_same_file_name_in_two_folders_keeps_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, local_ray: None
) -> None:
    camera_folders(tmp_path / "in")
    monkeypatch.chdir(tmp_path)
    assert main(["shard", "--input", "in", "--output", "o", *SMALL]) == 0
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["sources"] == 3 and summary["clips"] == 3 and summary["errors"] == 0
    assert manifest(tmp_path / "o") == shard_contents(tmp_path / "o")
    sources = {r["source"] for r in pq.read_table(tmp_path / "o" / "manifest.parquet").to_pylist()}
    assert sources == {str(tmp_path / "in" / r) for r in ("a/x.mp4", "b/x.mp4", "y.mp4")}


def test_every_spelling_of_the_input_names_sources_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3_server: str, s3_bucket: str
) -> None:
    root = camera_folders(tmp_path / "in")
    (root / "notes.txt").write_text("not a video")
    monkeypatch.chdir(tmp_path)
    store = Storage(StorageConfig(s3_endpoint_url=s3_server))
    for rel in ("a/x.mp4", "b/x.mp4", "y.mp4"):
        store.upload(root / rel, f"s3://{s3_bucket}/raw/{rel}")
    rows = [{"path": p} for p in ("a/x.mp4", "./b/x.mp4", "y.mp4")]
    (root / "list.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    exts = ShardConfig().extensions

    def names(uri: str, storage: Storage | None = None) -> list[tuple[str, str]]:
        listing = list_sources(uri, storage or Storage(), exts)
        return [(s.rel, s.source_id) for s in listing.sources]

    want = names(str(root))
    assert [rel for rel, _ in want] == ["a/x.mp4", "b/x.mp4", "y.mp4"]
    assert len({sid for _, sid in want}) == 3
    for spelling in ("in", "./in/", f"file://{root}", "in/a/.."):
        assert names(spelling) == want, spelling
    assert names(f"s3://{s3_bucket}/raw/", store) == want
    assert names("in/list.jsonl") == want
    assert list_sources("in", Storage(), exts).ignored == {".txt": 1, ".jsonl": 1}


def test_a_source_that_fails_part_way_stages_no_clip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    video = write_video(
        tmp_path / "two.mp4",
        moving_frames(96, 64, 30, 1, (250, 20, 20)) + moving_frames(96, 64, 30, 2, (20, 20, 250)),
    )
    real = process.encode_clips

    def first_then_timeout(*args, **kwargs):  # type: ignore[no-untyped-def]
        clips = real(*args, **kwargs)
        yield next(clips)
        raise InputError("encode", "timeout: still encoding at frame 40 after 1s")

    monkeypatch.setattr(process, "encode_clips", first_then_timeout)
    staging = str(tmp_path / "staging")
    src = Source(str(video), "two.mp4")
    cfg = ShardConfig(max_pixels=12288, min_side=32)
    rec = worker.process_source(src, cfg, Storage(), staging, isolate=False)
    assert rec["error"]["stage"] == "encode" and rec["clips"] == []
    tar, _ = records.staged_paths(staging, src.source_id)
    assert not Path(tar).exists()
    monkeypatch.setattr(process, "encode_clips", real)
    assert len(worker.process_source(src, cfg, Storage(), staging, isolate=False)["clips"]) == 2


def test_rerun_retries_failures_and_repairs_a_half_staged_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, local_ray: None
) -> None:
    camera_folders(tmp_path / "in")
    monkeypatch.chdir(tmp_path)
    argv = ["shard", "--input", "in", "--output", "o", *SMALL]
    assert main([*argv, "--set", "shard.file_timeout_s=0.001"]) == 1  # every input times out
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["errors"] == 3 and summary["clips"] == 0
    # What the old code left after a part-way failure: an error record that lists a clip whose
    # staged tar was never written. The rerun must neither crash on it nor keep the error.
    staging = tmp_path / "o" / "_work" / "staging"
    half = json.loads(next(staging.glob("*.json")).read_text())
    half["clips"] = [{"key": f"{half['source_id']}-s000-c00", "bytes": 10}]
    (staging / f"{half['source_id']}.json").write_text(json.dumps(half))

    assert main([*argv, "--skip-failed"]) == 1  # errors kept: still nothing
    assert main(argv) == 0  # a higher timeout (the default) and the failures are tried again
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["errors"] == 0 and summary["clips"] == 3 and summary["processed_sources"] == 3
    assert manifest(tmp_path / "o") == shard_contents(tmp_path / "o")


def test_overwrite_with_a_relative_output_replaces_the_shards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, local_ray: None
) -> None:
    (tmp_path / "in").mkdir()
    for i in range(2):  # distinct names: this is about the output side only
        write_video(tmp_path / "in" / f"v{i}.mp4", moving_frames(96, 64, 30, seed=i))
    # As a user types it, in a shell in that folder (the job starts its own Ray there).
    argv = [sys.executable, "-m", "infra.cli", "shard", "--input", "in", "--output", "./o", *SMALL]
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def cli(*more: str) -> int:
        return subprocess.run(
            [*argv, *more], cwd=tmp_path, env=env, capture_output=True, timeout=300
        ).returncode

    assert cli("--set", "shard.crf=45") == 0
    low = shard_contents(tmp_path / "o")
    assert len(low) == 2
    assert cli("--set", "shard.crf=18") == 1  # other settings: refused, not mixed
    assert cli("--set", "shard.crf=18", "--overwrite") == 0
    high = shard_contents(tmp_path / "o")
    assert manifest(tmp_path / "o") == high
    assert set(high) == set(low) and all(high[k] != low[k] for k in high)


def test_new_inputs_are_added_and_changed_ones_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, local_ray: None
) -> None:
    root = camera_folders(tmp_path / "in")
    monkeypatch.chdir(tmp_path)
    argv = ["shard", "--input", "in", "--output", "o", *SMALL]
    assert main(argv) == 0
    first = {p.name: p.read_bytes() for p in (tmp_path / "o").glob("clips-*.tar")}
    (root / "c").mkdir()
    write_video(root / "c" / "x.mp4", moving_frames(96, 64, 30, seed=7))
    assert main(argv) == 0
    after = {p.name: p.read_bytes() for p in (tmp_path / "o").glob("clips-*.tar")}
    assert all(after[n] == b for n, b in first.items())  # published shards never rewritten
    assert len(after) == len(first) + 1
    assert len(manifest(tmp_path / "o")) == 4 == len(shard_contents(tmp_path / "o"))
    write_video(root / "y.mp4", moving_frames(96, 64, 36, seed=8))  # new content, same name
    assert main(argv) == 1
