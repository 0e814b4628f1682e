"""data_pipeline pieces as plain functions: geometry, sources, scene logic, shard planning."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_pipeline.config import ShardConfig
from data_pipeline.probe import display_size, output_size
from data_pipeline.scenes import Analysis, find_scenes, plan_clips
from data_pipeline.shards import ShardPlanner
from data_pipeline.sources import list_sources, source_id
from infra.storage import Storage


@pytest.mark.parametrize(
    ("w", "h", "budget", "mult", "expected"),
    [
        (1920, 1080, 1280 * 720, 16, (1280, 720)),
        (1080, 1920, 1280 * 720, 16, (720, 1280)),
        (640, 272, 1280 * 720, 16, (640, 272)),  # under budget: native, already multiples
        (101, 75, 1280 * 720, 16, (112, 80)),  # odd sides: the multiples closest in aspect
        (3026, 1386, 1280 * 720, 16, (1408, 640)),  # within the budget, closest in aspect
        (427, 256, 224 * 128, 16, (208, 128)),  # not 224x128: that is 1.75 for 1.67
        (176, 144, 1280 * 720, 16, (176, 144)),
        (10, 10, 1280 * 720, 16, (16, 16)),  # at least one multiple
    ],
)
def test_output_size(w: int, h: int, budget: int, mult: int, expected: tuple[int, int]) -> None:
    ow, oh = output_size(w, h, budget, mult)
    assert (ow, oh) == expected
    assert ow % mult == 0 and oh % mult == 0 and ow * oh <= max(budget, mult * mult)
    assert abs(ow / oh - w / h) / (w / h) < 0.04  # aspect kept up to rounding


def test_display_size_applies_sar_then_rotation() -> None:
    assert display_size(704, 576, Fraction(16, 11), 0) == (1024, 576)
    assert display_size(1920, 1080, Fraction(1), -90) == (1080, 1920)
    assert display_size(176, 144, Fraction(128, 117), 90) == (144, 193)


def test_source_ids_are_stable_unique_and_dot_free() -> None:
    a = source_id("dir/my.video.v2.mp4")
    assert "." not in a and a == source_id("dir/my.video.v2.mp4")
    assert a != source_id("other/my.video.v2.mp4")


def test_list_folder_and_manifests(tmp_path: Path) -> None:
    store = Storage()
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    for name in ["b.mp4", "sub/a.MOV", "notes.txt", ".hidden.mp4", "sub/c.webm"]:
        (root / name).write_bytes(b"x")
    listing = list_sources(str(root), store, ShardConfig().extensions)
    assert [s.rel for s in listing.sources] == ["b.mp4", "sub/a.MOV", "sub/c.webm"]
    assert listing.ignored == {".txt": 1}
    assert len(list_sources(str(root), store, []).sources) == 4  # every visible file

    rows = [{"path": "sub/a.MOV", "caption": "a cat"}, {"path": "b.mp4", "caption": None}]
    (root / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "m.csv").write_text("path,caption\nsub/a.MOV,a cat\nb.mp4,\n")
    pq.write_table(
        pa.table({"path": ["sub/a.MOV", "b.mp4"], "caption": ["a cat", None]}), root / "m.parquet"
    )
    for name in ["m.jsonl", "m.csv", "m.parquet"]:
        srcs = list_sources(str(root / name), store, []).sources
        assert [(s.rel, s.uri) for s in srcs] == [
            ("b.mp4", str(root / "b.mp4")),
            ("sub/a.MOV", str(root / "sub/a.MOV")),
        ]
        assert srcs[1].caption == "a cat"
    (root / "bad.csv").write_text("file\nx.mp4\n")
    with pytest.raises(ValueError, match=r"bad.csv: manifest needs a 'path' column"):
        list_sources(str(root / "bad.csv"), store, [])
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        list_sources(str(tmp_path / "nothing-here"), store, [])


def _analysis(
    luma: list[float], cuts: list[int], fps: float = 10.0, motion: float = 0.05
) -> Analysis:
    n = len(luma)
    return Analysis(
        times=np.arange(n) / fps,
        luma=np.asarray(luma, float),
        motion=np.full(n, motion),
        hard_cuts=cuts,
        vfr=False,
        interval_ratio=1.0,
        pts_monotonic=True,
    )


def test_scenes_from_hard_cuts_and_fades() -> None:
    cfg = ShardConfig()
    # 0-9 dark lead-in, 10-39 scene, 40-49 dark (fade), 50-79 scene with a hard cut at 65, 80-84 dark.
    luma = [2] * 10 + [100] * 30 + [3] * 10 + [90] * 30 + [1] * 5
    scenes, cuts = find_scenes(_analysis(luma, [10, 40, 50, 65]), cfg)
    assert scenes == [(10, 40), (50, 65), (65, 80)]
    assert cuts == [45, 65]  # fade: midway between fade-out (40) and fade-in (50); hard cut as is


def test_plan_clips_splits_long_scenes_and_filters() -> None:
    cfg = ShardConfig(min_clip_seconds=1.0, max_clip_seconds=2.0)
    luma = [100] * 50 + [100] * 5  # a 5 s scene, then a 0.5 s scene after a hard cut
    plans, dropped = plan_clips(_analysis(luma, [50]), 10.0, cfg)
    assert [(p.start, p.end) for p in plans] == [(0, 17), (17, 34), (34, 50)]
    assert all(len(p.src_frames) == p.end - p.start for p in plans)
    assert dropped == {"too_short": 1}
    plans, dropped = plan_clips(_analysis([100] * 30, [], motion=0.0), 10.0, cfg)
    assert plans == [] and dropped == {"static": 2}


def test_vfr_resampling_repeats_and_skips_frames() -> None:
    cfg = ShardConfig(min_clip_seconds=0.1, max_clip_seconds=10.0)
    a = _analysis([100] * 5, [])
    a.times = np.array([0.0, 0.1, 0.15, 0.2, 0.5])  # a burst, then a long gap
    a.vfr = True
    (plan,), _ = plan_clips(a, 10.0, cfg)
    assert plan.src_frames == [0, 1, 3, 3, 3, 4]  # frame 2 skipped (same slot), 3 held over the gap


def test_shard_planner_is_deterministic_and_respects_limits() -> None:
    recs = [
        {
            "source_id": f"s{i}",
            "clips": [{"key": f"s{i}-c{j}", "bytes": 400} for j in range(i % 3 + 1)],
        }
        for i in range(10)
    ]

    def plan() -> list[list[str]]:
        p = ShardPlanner(max_bytes=2000, max_clips=3)
        out = [s for r in recs for s in p.add(r)]
        last = p.finish()
        return [[k for _, k in s.entries] for s in [*out, *([last] if last else [])]]

    shards = plan()
    assert shards == plan()
    assert all(1 <= len(s) <= 3 for s in shards)
    flat = [k for s in shards for k in s]
    assert flat == [c["key"] for r in recs for c in r["clips"]]  # order kept, nothing lost
