"""Bad inputs never stop `spacetime shard` and never cost good data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from data_pipeline.config import ShardConfig
from data_pipeline.job import run_shard
from infra.errors import JobError
from infra.storage_config import StorageConfig
from tests.media import moving_frames, write_audio_only, write_video

pytestmark = pytest.mark.slow


def _noisy(w: int, h: int, n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        np.clip(f.astype(int) + rng.integers(-40, 40, f.shape), 0, 255).astype(np.uint8)
        for f in moving_frames(w, h, n, seed)
    ]


def make_corpus(root: Path) -> tuple[dict[str, str], list[str]]:
    """Writes good and bad inputs; returns {bad name: expected reason text} and the good names."""
    root.mkdir(parents=True)
    good = {
        "good.mp4": lambda p: write_video(p, moving_frames(160, 96, 48, 1), audio=True),
        "odd_101x75.avi": lambda p: write_video(
            p, moving_frames(101, 75, 48, 2), codec="mjpeg", pix_fmt="yuvj420p"
        ),
        "odd_99x131.mkv": lambda p: write_video(
            p, moving_frames(99, 131, 40, 3), codec="mjpeg", pix_fmt="yuvj420p"
        ),
        "rotated.mp4": lambda p: write_video(p, moving_frames(160, 96, 48, 4), rotation=90),
        "two_scenes.mp4": lambda p: write_video(
            p,
            moving_frames(128, 128, 36, 5, (250, 20, 20))
            + moving_frames(128, 128, 36, 6, (20, 20, 250)),
        ),
    }
    for name, make in good.items():
        make(root / name)
    # A source with its index (moov) first, as streaming uploads are: truncation keeps it readable.
    big = root / "_big.mp4"
    write_video(big, _noisy(320, 240, 96, 7))
    import av

    with (
        av.open(str(big)) as src,
        av.open(str(root / "_faststart.mp4"), "w", options={"movflags": "+faststart"}) as dst,
    ):
        s_in = src.streams.video[0]
        s_out = dst.add_stream_from_template(s_in)
        for pkt in src.demux(s_in):
            if pkt.dts is None:
                continue
            pkt.stream = s_out
            dst.mux(pkt)
    fast = (root / "_faststart.mp4").read_bytes()
    plain = big.read_bytes()
    big.unlink()
    (root / "_faststart.mp4").unlink()
    bad = {}

    def put(name: str, data: bytes, reason: str) -> None:
        (root / name).write_bytes(data)
        bad[name] = reason

    # Depending on where the cut lands, the decoder errors out or silently stops early.
    for frac in (0.3, 0.6, 0.9):
        put(
            f"trunc_fast_{int(frac * 100)}.mp4",
            fast[: int(len(fast) * frac)],
            "truncated|decode error",
        )
    put("trunc_moov_lost.mp4", plain[: len(plain) // 2], "unreadable")
    put("zero.mp4", b"", "empty file")
    put("text.mp4", b"this is not a video\n" * 100, "unreadable")
    put(
        "random_bytes.mov",
        np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes(),
        "unreadable",
    )
    mid = bytearray(fast)
    mid[len(mid) // 2 : len(mid) // 2 + 65536] = (
        np.random.default_rng(1).integers(0, 256, 65536, dtype=np.uint8).tobytes()
    )
    put("corrupt_middle.mp4", bytes(mid), "decode error")
    put(
        "unknown_codec.mp4",
        (root / "good.mp4").read_bytes().replace(b"avc1", b"zzzz"),
        "unsupported codec",
    )
    write_audio_only(root / "audio_only.mp4")
    bad["audio_only.mp4"] = "no video stream (audio-only)"
    write_video(root / "too_large.mp4", moving_frames(400, 304, 24, 8))
    bad["too_large.mp4"] = "too large"
    write_video(root / "too_short.mp4", moving_frames(160, 96, 6, 9))
    bad["too_short.mp4"] = "too_short"
    still = moving_frames(160, 96, 1, 10) * 48
    write_video(root / "static.mp4", still)
    bad["static.mp4"] = "static"
    return bad, list(good)


def test_bad_inputs_are_recorded_and_good_ones_kept(tmp_path: Path, local_ray: None) -> None:
    bad, good = make_corpus(tmp_path / "in")
    out = tmp_path / "out"
    cfg = ShardConfig(max_input_pixels=320 * 240, min_side=32)
    summary = run_shard(str(tmp_path / "in"), str(out), cfg, StorageConfig())
    errors = {
        Path(e["path"]).name: e
        for e in map(json.loads, (out / "errors.jsonl").read_text().splitlines())
    }
    assert set(errors) == set(bad), (set(errors) ^ set(bad), errors)
    for name, reason in bad.items():
        assert any(r in errors[name]["reason"] for r in reason.split("|")), (name, errors[name])
        assert errors[name]["stage"] in ("read", "probe", "analyse", "encode", "filter")
    records = {
        json.loads(p.read_text())["rel"]: json.loads(p.read_text())
        for p in (out / "_work" / "staging").glob("*.json")
    }
    for name in good:
        assert records[name]["clips"], (name, records[name]["error"])
    assert len(records["two_scenes.mp4"]["clips"]) == 2  # the colour change is a cut
    assert summary["errors"] == len(bad) and summary["sources_with_clips"] == len(good)
    assert sum(summary["errors_by_reason"].values()) == len(bad)


def test_job_level_errors_are_clear(tmp_path: Path, local_ray: None) -> None:
    with pytest.raises(FileNotFoundError, match="no-such-dir"):
        run_shard(
            str(tmp_path / "no-such-dir"), str(tmp_path / "o"), ShardConfig(), StorageConfig()
        )
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(JobError, match="no input videos found"):
        run_shard(str(tmp_path / "empty"), str(tmp_path / "o"), ShardConfig(), StorageConfig())
    # An output made with another config is not silently mixed with a new run.
    (tmp_path / "o" / "_work").mkdir(parents=True, exist_ok=True)
    (tmp_path / "o" / "_work" / "job.json").write_text(
        json.dumps({"input": "elsewhere", "fingerprint": "x"})
    )
    write_video(tmp_path / "empty" / "v.mp4", moving_frames(64, 64, 30, 0))
    with pytest.raises(JobError, match="--overwrite"):
        run_shard(str(tmp_path / "empty"), str(tmp_path / "o"), ShardConfig(), StorageConfig())


def test_cli_exit_status_when_the_job_cannot_run(tmp_path: Path) -> None:
    from infra.cli import main
    from tests.conftest import free_port

    write_video(tmp_path / "v.mp4", moving_frames(64, 64, 30, 0))
    assert (
        main(["shard", "--input", str(tmp_path / "missing"), "--output", str(tmp_path / "o")]) == 1
    )
    dead = f"http://127.0.0.1:{free_port()}"
    argv = ["shard", "--input", str(tmp_path), "--output", "s3://bucket/out"]
    argv += ["--set", f"storage.s3_endpoint_url={dead}", "--set", "storage.max_attempts=1"]
    assert main(argv) == 1
    assert (
        main(
            [
                "shard",
                "--input",
                str(tmp_path),
                "--output",
                str(tmp_path / "o"),
                "--set",
                "shard.crf=99",
            ]
        )
        == 2
    )
