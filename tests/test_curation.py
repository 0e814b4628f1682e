"""Curation scores on fixture videos made at test time, `shard.filters` into rejected.parquet, and
`spacetime curate`'s selection read by the next stages."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest

from data_pipeline.config import CurateConfig, FilterConfig, ScoreConfig, ShardConfig
from data_pipeline.curate import curate
from data_pipeline.dedup import near_duplicates
from data_pipeline.scores import ClipScorer
from data_pipeline.sources import Source
from data_pipeline.worker import process_source
from infra.shards import open_clips
from infra.storage import Storage
from tests import curation_media as cm

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def scored(videos_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """{fixture name: its staged record} for every fixture video, processed as `shard` does."""
    img = cm.still(videos_dir)
    big = cm.resized([img], img.shape[1] * 2, img.shape[0] * 2)[0]
    base = cm.pan(img, 1, 0)
    wide = cm.pan(big, 1, 0, 512, 288)
    videos: dict[str, Any] = {
        "static": cm.pan(img, 0, 0),
        "slow": base,
        "fast": cm.pan(img, 4, 0),
        "tilt": cm.pan(img, 0, 2),
        "zoom_in": cm.zoom(img, 2.0, 1.0),
        "zoom_out": cm.zoom(img, 1.0, 2.0),
        "notext": wide,
        **{f"text{s}": cm.with_text(wide, s) for s in (16, 32, 64)},
        "letterbox": cm.bars(base, top=24),
        "pillarbox": cm.bars(cm.pan(img, 1, 0, 192, 144), left=32),
        "blur": [cm.cv2.GaussianBlur(f, (0, 0), 2) for f in base],
        "bright": [cm.np.clip(f.astype(int) * 2, 0, 255).astype("uint8") for f in base],
        "rescaled": cm.resized(base, 192, 108),
        "cropped": cm.resized([f[4:-4, 8:-8] for f in base], 224, 128),
        "other": cm.pan(cm.still(videos_dir, "bikes.mp4", 10), 1, 0),
        # one source, two scenes (a hard cut between two camera moves)
        "two_scenes": cm.pan(img, 1, 0) + cm.pan(cm.still(videos_dir, "bikes.mp4", 10), 0, 1),
    }
    d = tmp_path_factory.mktemp("curation")
    paths = {k: cm.write(d / f"{k}.mp4", v) for k, v in videos.items()}
    paths["reencoded"] = cm.write(d / "reencoded.mp4", base, codec="mpeg4")
    cfg = ShardConfig(min_motion=0.0)  # the static fixture must stay
    return {
        k: process_source(Source(str(p), p.name), cfg, Storage(), str(d / "st"), isolate=False)
        for k, p in paths.items()
    }


def _scores(scored: dict[str, Any], name: str) -> dict[str, Any]:
    rec = scored[name]
    assert rec["error"] is None, (name, rec["error"])
    return rec["clips"][0]["scores"]


def test_motion_orders_static_slow_fast_and_classes_the_camera(scored: dict[str, Any]) -> None:
    flow = {k: _scores(scored, k)["flow"] for k in ("static", "slow", "fast")}
    assert flow["static"] < 0.01 < flow["slow"] < flow["fast"] / 2, flow
    # 1 and 4 px per frame at 24 fps over 256 px: 0.094 and 0.375 frame widths per second
    assert abs(_scores(scored, "slow")["pan"] - 24 / 256) < 0.02
    assert abs(_scores(scored, "fast")["pan"] - 96 / 256) < 0.06
    cameras = {k: _scores(scored, k)["camera"] for k in scored if k in cm.CAMERA_FIXTURES}
    assert cameras == cm.CAMERA_FIXTURES


def test_a_clip_narrower_than_the_flow_width_reads_the_same_speeds(videos_dir: Path) -> None:
    # The demo's 64 px clips are measured at their own size, not upscaled to 128 px: a pan of 2
    # and 4 px per frame at 256 px is 0.1875 and 0.375 frame widths per second at any size.
    img = cm.still(videos_dir)
    for px, want in ((2, 0.1875), (4, 0.375)):
        frames = cm.pan(img, px, 0)
        scorer = ClipScorer(len(frames), 24.0, ScoreConfig(text_frames=0))
        for f in cm.resized(frames, 64, 36):
            y = cm.cv2.cvtColor(f, cm.cv2.COLOR_RGB2YUV_I420)[:36]
            scorer.add([y, y[:18, :32], y[:18, :32]])
        got = scorer.result()
        assert scorer.i == len(frames) and got["camera"] == "pan", got
        assert abs(got["pan"] - want) < 0.02 and abs(got["flow"] - want) < 0.03, (got, want)


def test_text_score_grows_with_the_burnt_in_text_area(scored: dict[str, Any]) -> None:
    text = {k: _scores(scored, k)["text"] for k in ("notext", "text16", "text32", "text64")}
    assert text["notext"] < 0.002 < text["text16"] < text["text32"] < text["text64"], text
    # the text's area grows 16x from 16 to 64 px high; boxes carry a margin, so less than that
    assert text["text64"] > 4 * text["text16"], text


def test_letterbox_and_pillarbox_are_cropped_to_the_picture(scored: dict[str, Any]) -> None:
    for name, box, size in (
        ("letterbox", [0, 24, 256, 168], (256, 144)),
        ("pillarbox", [32, 0, 224, 144], (192, 144)),
    ):
        rec = scored[name]
        assert all(abs(a - b) <= 2 for a, b in zip(rec["crop"], box, strict=True)), rec["crop"]
        clip = rec["clips"][0]
        assert (clip["width"], clip["height"]) == size
        assert clip["scores"]["dark"] < 0.01  # no bar left in the clip
    for name in ("slow", "static", "bright", "blur", "two_scenes"):
        assert scored[name]["crop"] is None, name


def test_blur_and_exposure_scores(scored: dict[str, Any]) -> None:
    slow, blur, bright = (_scores(scored, k) for k in ("slow", "blur", "bright"))
    assert blur["sharpness"] < slow["sharpness"] / 5, (blur, slow)
    assert bright["bright"] > 0.05 > slow["bright"] + 0.04, (bright, slow)


def _manifest(scored: dict[str, Any], names: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {**c, **c["scores"], "source_id": scored[n]["source_id"], "name": n}
            for n in names
            for c in scored[n]["clips"]
        ]
    )


def test_near_duplicates_keep_the_largest_copy_and_never_merge_one_source(
    scored: dict[str, Any],
) -> None:
    names = ["rescaled", "slow", "reencoded", "cropped", "other", "fast"]
    df = _manifest(scored, names)
    dups = near_duplicates(df, CurateConfig().dedup_distance)
    name = dict(zip(df["key"], df["name"], strict=True))
    # the three copies point at a kept 256x144 copy (slow and the re-encode tie on size and
    # length; the smaller key wins)
    kept = {name[k] for k in dups.values()}
    assert kept <= {"slow", "reencoded"} and len(kept) == 1, dups
    removed = {name[k] for k in dups}
    assert removed == {"rescaled", "cropped", "slow", "reencoded"} - kept, dups
    # two_scenes's first scene is the same camera move as `slow`, so it is a copy of it; its
    # second scene is another picture. Its two clips never pair with each other.
    df2 = _manifest(scored, ["two_scenes"])
    assert len(df2) == 2
    assert near_duplicates(df2, 64.0) == {}
    assert len(near_duplicates(_manifest(scored, ["two_scenes", "slow"]), 6.0)) == 1


def test_the_ray_dedup_stage_finds_the_same_duplicates(
    scored: dict[str, Any], local_ray: None
) -> None:
    """The all-to-all on Ray Data (partitions of bands) and the in-process search agree."""
    df = _manifest(scored, [k for k in scored if k != "two_scenes"])
    local = near_duplicates(df, 6.0)
    assert len(local) >= 6  # slow's copies: letterbox (cropped), blur, rescaled, cropped, ...
    assert near_duplicates(df, 6.0, partitions=3) == local


def test_curate_filters_charge_each_clip_to_its_first_rule(scored: dict[str, Any]) -> None:
    df = _manifest(scored, ["slow", "text64", "blur", "static", "rescaled", "zoom_in"])
    cfg = CurateConfig(
        filters=FilterConfig(max_text=0.05, min_sharpness=20, cameras=["pan", "zoom_in"]),
        where="seconds >= 1.5",
    )
    kept, removed = curate(df, cfg)
    rule = dict(zip(removed["name"], removed["rule"], strict=True))
    assert rule == {
        "text64": "max_text",
        "blur": "min_sharpness",
        "static": "cameras",
        "rescaled": "duplicate",
    }, removed[["name", "rule", "reason"]]
    assert sorted(kept["name"]) == ["slow", "zoom_in"]
    assert removed.set_index("name").at["rescaled", "reason"].startswith("duplicate of ")
    with pytest.raises(Exception, match=r"curate\.where"):
        curate(df, CurateConfig(where="no_such_column > 1"))


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_shard_filters_reject_into_a_table_and_curate_selects_for_the_next_stages(
    videos_dir: Path, tmp_path: Path
) -> None:
    img = cm.still(videos_dir)
    big = cm.resized([img], img.shape[1] * 2, img.shape[0] * 2)[0]
    src = tmp_path / "in"
    src.mkdir()
    cm.write(src / "a_text.mp4", cm.with_text(cm.pan(big, 1, 0, 512, 288), 64))
    cm.write(src / "b_slow.mp4", cm.pan(img, 1, 0))
    cm.write(src / "c_copy.mp4", cm.resized(cm.pan(img, 1, 0), 192, 108))
    cm.write(src / "d_tilt.mp4", cm.pan(img, 0, 2))
    cm.write(src / "e_static.mp4", cm.pan(img, 0, 0))
    shards = tmp_path / "clips"
    r = _cli(
        "shard", "--input", str(src), "--output", str(shards),
        "--set", "shard.filters.max_text=0.1", "--set", "shard.min_motion=0",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    rejected = pq.read_table(shards / "rejected.parquet").to_pandas()
    assert list(rejected["source"].str.rsplit("/", n=1).str[-1]) == ["a_text.mp4"]
    assert rejected.at[0, "rule"] == "max_text" and rejected.at[0, "text"] > 0.1
    manifest = pq.read_table(shards / "manifest.parquet").to_pandas()
    assert len(manifest) == 4 and manifest["phash"].str.len().eq(48).all()
    # nothing lost: every planned clip is in a shard or in rejected.parquet
    staged = [json.loads(p.read_text()) for p in (shards / "_work" / "staging").glob("*.json")]
    planned = {c["key"] for r in staged for c in r["clips"] + r["rejected"]}
    assert planned == set(manifest["key"]) | set(rejected["key"]) and len(planned) == 5
    summary = json.loads((shards / "summary.json").read_text())
    assert summary["clips_rejected"] == {"max_text": 1}

    sel = tmp_path / "sel"
    r = _cli(
        "curate", "--shards", str(shards), "--output", str(sel),
        "--set", "curate.filters.cameras=[pan, tilt]",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "duplicate" in r.stderr and "cameras" in r.stderr  # the per-rule table
    chosen = pq.read_table(sel / "selection.parquet").to_pandas()
    by_src = sorted(chosen["source"].str.rsplit("/", n=1).str[-1])
    assert by_src == ["b_slow.mp4", "d_tilt.mp4"], by_src
    removed = json.loads((sel / "summary.json").read_text())["removed_by_rule"]
    assert {k: v["clips"] for k, v in removed.items()} == {"cameras": 1, "duplicate": 1}
    first = {n: (sel / n).read_bytes() for n in ("selection.parquet", "removed.parquet")}
    r = _cli(
        "curate", "--shards", str(shards), "--output", str(sel),
        "--set", "curate.filters.cameras=[pan, tilt]",
    )  # fmt: skip
    assert r.returncode == 0 and first == {n: (sel / n).read_bytes() for n in first}

    clip_set = open_clips(str(sel), Storage())
    assert {k for s in clip_set.shards for k in clip_set.keys(s) or ()} == set(chosen["key"])
    caps = tmp_path / "caps"
    r = _cli("recaption", "--shards", str(sel), "--output", str(caps), "--backend", "stats")
    assert r.returncode == 0, r.stderr[-3000:]
    index = pq.read_table(caps / "index.parquet").to_pandas()
    assert set(index["key"]) == set(chosen["key"])

    from trainer.data.plan import load_index
    from trainer.vae.config import VAEConfig
    from trainer.vae.model import CausalVAE

    vae, lat = tmp_path / "vae", tmp_path / "latents"
    CausalVAE(VAEConfig.named("tiny")).save_pretrained(vae)
    r = _cli(
        "encode", "--shards", str(sel), "--vae", str(vae), "--output", str(lat),
        "--set", "encode.max_frames=9",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert {e.key for e in load_index(str(lat), Storage()).entries} == set(chosen["key"])


def test_a_selection_is_an_index_for_train_clips(tmp_path: Path) -> None:
    """`train --clips SEL` plans from the selection's rows, not the whole manifest."""
    from types import SimpleNamespace

    import pyarrow as pa

    from trainer.data.raw import clip_index

    shards = tmp_path / "clips"
    shards.mkdir()
    for n in (0, 1):
        (shards / f"clips-00000{n}.tar").write_bytes(b"")
    rows = [
        {"key": f"k{i}", "shard": f"clips-00000{i % 2}.tar", "frames": 17, "height": 64,
         "width": 96, "shard_uri": str(shards / f"clips-00000{i % 2}.tar")}
        for i in (1, 2, 5)
    ]  # fmt: skip
    sel = tmp_path / "sel"
    sel.mkdir()
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    (sel / "selection.parquet").write_bytes(buf.getvalue())
    vae = SimpleNamespace(time_stride=4, space_stride=8, latent_channels=4)
    index = clip_index(str(sel), Storage(), vae, max_frames=17)
    assert sorted(e.key for e in index.entries) == ["k1", "k2", "k5"]
