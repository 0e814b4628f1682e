"""Curation benchmark: what each scorer costs, what scoring adds to `spacetime shard`, and how
long the near-duplicate search takes.

    python bench/curation.py [--input DIR] [--rows 100000]

1. Scorer cost: every sample video processed in this process (`process_source`), CPU time per
   scorer (data_pipeline/scores.py counts it) per second of clip video.
2. `spacetime shard` wall time on the sample videos, local Ray, 2 workers, scores on and off
   (`shard.scores.enabled`, `shard.scores.crop_borders`), one run each in this invocation;
   target: scoring adds <= 30%.
3. Dedup on a synthetic manifest: random scores and random 3-frame hashes, 5% planted copies of
   other rows (another source, a smaller size, each frame hash with 0-4 bits flipped, which is
   what re-encoded, rescaled and 3%-cropped copies measured in tests/test_curation.py); in this
   process and as the Ray Data all-to-all on the local Ray. Recall: planted copies removed as
   duplicates; false merges: removed rows that were not planted.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_pipeline import scores as scores_module
from data_pipeline.config import CurateConfig, FilterConfig, ScoreConfig, ShardConfig
from data_pipeline.curate import curate
from data_pipeline.job import run_shard
from data_pipeline.sources import list_sources
from data_pipeline.worker import process_source
from infra.ray_cluster import ray_session
from infra.storage import Storage
from infra.storage_config import StorageConfig

DEFAULT_INPUT = Path(__file__).resolve().parents[2] / "shared" / "data" / "videos"
MAX_PIXELS = 640 * 360


def scorer_costs(input_dir: str, work: Path) -> None:
    costs = dict.fromkeys(scores_module.SCORERS, 0.0)
    seconds = 0.0
    real_result = scores_module.ClipScorer.result

    def result(self: scores_module.ClipScorer) -> dict:  # type: ignore[type-arg]
        nonlocal seconds
        for k, v in self.cost.items():
            costs[k] += v
        seconds += self.i / self.fps
        return real_result(self)

    scores_module.ClipScorer.result = result  # type: ignore[method-assign]
    cfg = ShardConfig(max_pixels=MAX_PIXELS)
    t0 = time.process_time()
    for src in list_sources(input_dir, Storage(), cfg.extensions).sources:
        process_source(src, cfg, Storage(), str(work / "staging"), isolate=False)
    total = time.process_time() - t0
    scores_module.ClipScorer.result = real_result  # type: ignore[method-assign]
    print(f"scorer CPU cost, {seconds:.1f} s of clips at <= {MAX_PIXELS} px, one process\n")
    print("| scorer | ms per second of video | share of the shard work |")
    print("|---|---|---|")
    for k, v in costs.items():
        print(f"| {k} | {1000 * v / seconds:.1f} | {100 * v / total:.1f}% |")
    all_ = sum(costs.values())
    print(f"| all | {1000 * all_ / seconds:.1f} | {100 * all_ / total:.1f}% |\n")


def shard_on_off(input_dir: str, work: Path) -> None:
    rows = []
    for name, enabled in (("scores off", False), ("scores on", True)):
        cfg = ShardConfig(
            max_pixels=MAX_PIXELS,
            num_workers=2,
            scores=ScoreConfig(enabled=enabled, crop_borders=enabled),
        )
        t0 = time.perf_counter()
        s = run_shard(input_dir, str(work / name.replace(" ", "_")), cfg, StorageConfig())
        rows.append((name, time.perf_counter() - t0, s["clips"]))
    print("`spacetime shard`, local Ray, 2 workers (Ray start-up included)\n")
    print("| run | wall s | clips |")
    print("|---|---|---|")
    for name, wall, clips in rows:
        print(f"| {name} | {wall:.1f} | {clips} |")
    added = rows[1][1] / rows[0][1] - 1
    verdict = "met" if added <= 0.30 else "not met"
    print(f"\nscoring adds {100 * added:+.1f}% to the shard job (target <= +30%: {verdict})\n")


def manifest(n: int, seed: int = 0) -> tuple[pd.DataFrame, set[str]]:
    rng = np.random.default_rng(seed)
    hashes = rng.integers(0, 2**63, size=(n, 3), dtype=np.int64) * 2 + rng.integers(0, 2, (n, 3))
    planted: set[str] = set()
    width = np.full(n, 1280)
    # copies in the second half, originals in the first, so no copy is itself an original
    for i in rng.choice(np.arange(n // 2, n), size=n // 20, replace=False):
        j = int(rng.integers(0, n // 2))
        for f in range(3):
            flips = rng.choice(64, size=int(rng.integers(0, 5)), replace=False)
            h = int(hashes[j, f]) & (2**64 - 1)
            for b in flips:
                h ^= 1 << int(b)
            hashes[i, f] = np.int64(h - 2**64 if h >= 2**63 else h)
        width[i] = 640
        planted.add(f"k{i:08d}")
    df = pd.DataFrame(
        {
            "key": [f"k{i:08d}" for i in range(n)],
            "source_id": [f"s{i}" for i in range(n)],
            "width": width,
            "height": width * 9 // 16,
            "seconds": rng.uniform(1, 10, n),
            "flow": rng.uniform(0, 1, n),
            "camera": rng.choice(["static", "pan", "tilt", "zoom_in", "zoom_out"], n),
            "text": rng.uniform(0, 0.1, n),
            "sharpness": rng.uniform(0, 500, n),
            "dark": rng.uniform(0, 0.1, n),
            "bright": rng.uniform(0, 0.1, n),
            "phash": ["".join(f"{int(h) & (2**64 - 1):016x}" for h in row) for row in hashes],
        }
    )
    return df, planted


def dedup(rows: list[int]) -> None:
    print("near-duplicate search, synthetic manifest, 5% planted copies (0-4 bits per frame)\n")
    print("| clips | where | filters s | dedup s | us per clip | recall | false merges |")
    print("|---|---|---|---|---|---|---|")
    t0 = time.perf_counter()
    with ray_session(None, Path(tempfile.mkdtemp(prefix="bench-curation-ray-"))):
        start = time.perf_counter() - t0
        for n in rows:
            df, planted = manifest(n)
            filters = FilterConfig(max_text=0.05, min_sharpness=20, cameras=["static", "pan"])
            t0 = time.perf_counter()
            curate(df, CurateConfig(filters=filters, dedup=False))
            t_filters = time.perf_counter() - t0
            for where, parts in (("this process", 0), ("local Ray, 4 partitions", 4)):
                t0 = time.perf_counter()
                _, removed = curate(df, CurateConfig(dedup_partitions=parts))
                took = time.perf_counter() - t0
                dup = set(removed.loc[removed["rule"] == "duplicate", "key"])
                recall = len(dup & planted) / max(1, len(planted))
                print(
                    f"| {n} | {where} | {t_filters:.2f} | {took:.2f} | {1e6 * took / n:.0f} | "
                    f"{recall:.3f} | {len(dup - planted)} |"
                )
    print(f"\n(local Ray start-up, not in the table: {start:.1f} s)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", default=str(DEFAULT_INPUT))
    ap.add_argument("--rows", default="100000")
    ap.add_argument("--only", default="costs,shard,dedup")
    args = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    only = set(args.only.split(","))
    print(
        f"curation bench: {os.cpu_count()} cores, {platform.machine()}, "
        f"{time.strftime('%Y-%m-%d')}\n"
    )
    work = Path(tempfile.mkdtemp(prefix="bench-curation-"))
    try:
        if "costs" in only:
            scorer_costs(args.input, work / "costs")
        if "shard" in only:
            shard_on_off(args.input, work)
        if "dedup" in only:
            dedup([int(x) for x in args.rows.split(",")])
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
