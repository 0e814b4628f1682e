"""Near-duplicate clips across a whole dataset, from the perceptual hashes `shard` stores.

Each clip carries a 64-bit DCT hash per sampled frame. Candidate pairs share one 16-bit band of a
frame hash exactly (locality-sensitive hashing: a copy within a few bits per frame almost surely
shares a band, unrelated clips rarely do); they are confirmed by the mean Hamming distance per
frame, and clips of the same source are never paired (the parts of one long shot look alike and
are not copies). Groups of duplicates are the connected components of the confirmed pairs; each
keeps its largest, longest copy.

The pair search is an all-to-all: every (band, clip) row goes to the partition of its band, and
each partition pairs its rows on its own. With `partitions` > 0 that runs as a Ray Data group-by
over the cluster; with 0 it runs in this process (the same function, one partition).
"""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd

BLOCK_ROWS = 1 << 20
"""(band, clip) rows per Ray block (~50 MB) handed to the shuffle."""


def _hashes(rows: pd.DataFrame, length: int) -> np.ndarray:
    """(clips, frames) uint64 frame hashes from the hex strings."""
    return np.array(
        [[int(x[k : k + 16], 16) for k in range(0, length, 16)] for x in rows["phash"]],
        dtype=np.uint64,
    ).reshape(len(rows), length // 16)


def band_rows(h: np.ndarray, source: np.ndarray, partitions: int) -> pd.DataFrame:
    """One row per (clip, band): the band key, the clip's row, its source and its frame hashes."""
    n, frames = h.shape
    keys = np.concatenate(
        [
            (np.uint64(f * 4 + b) << np.uint64(16))
            | ((h[:, f] >> np.uint64(16 * b)) & np.uint64(0xFFFF))
            for f in range(frames)
            for b in range(4)
        ]
    )
    table = pd.DataFrame(
        {
            "band": keys.view(np.int64),
            "part": (keys % np.uint64(max(1, partitions))).astype(np.int64),
            "row": np.tile(np.arange(n), frames * 4),
            "src": np.tile(source, frames * 4),
        }
    )
    for f in range(frames):
        table[f"h{f}"] = np.tile(h[:, f].view(np.int64), frames * 4)
    return table


def close_pairs(group: pd.DataFrame, frames: int, max_distance: float) -> pd.DataFrame:
    """Confirmed pairs (a < b) among the rows of one partition."""
    shared = group[group.duplicated("band", keep=False)]  # most bands are unique: no pair
    m = shared.merge(shared, on="band")
    m = m[m["row_x"] < m["row_y"]].drop_duplicates(["row_x", "row_y"])
    cols = [f"h{f}" for f in range(frames)]
    hx = m[[c + "_x" for c in cols]].to_numpy(np.int64).view(np.uint64)
    hy = m[[c + "_y" for c in cols]].to_numpy(np.int64).view(np.uint64)
    distance = np.bitwise_count(hx ^ hy).sum(axis=1) / frames
    keep = (distance <= max_distance) & (m["src_x"].to_numpy() != m["src_y"].to_numpy())
    return pd.DataFrame({"a": m["row_x"].to_numpy()[keep], "b": m["row_y"].to_numpy()[keep]})


def near_duplicates(df: pd.DataFrame, max_distance: float, partitions: int = 0) -> dict[str, str]:
    """{removed key: the kept key it duplicates} over the clips of `df` that have a hash."""
    has = df["phash"].notna() & (df["phash"].str.len() > 0)
    if has.sum() < 2:
        return {}
    # Hashes of another length (another shard.scores.sample_frames) cannot be compared.
    length = int(df.loc[has, "phash"].str.len().mode()[0])
    rows = df[has & (df["phash"].str.len() == length)].reset_index(drop=True)
    h = _hashes(rows, length)
    source = pd.factorize(rows["source_id"])[0]
    table = band_rows(h, source, partitions)
    pair_fn = functools.partial(close_pairs, frames=h.shape[1], max_distance=max_distance)
    if partitions > 0:
        import ray  # only here: curate without Ray must not pay for importing it

        ray.data.DataContext.get_current().enable_progress_bars = False
        blocks = [table.iloc[i : i + BLOCK_ROWS] for i in range(0, len(table), BLOCK_ROWS)]
        ds = ray.data.from_pandas(blocks).groupby("part", num_partitions=partitions)
        pairs = ds.map_groups(pair_fn, batch_format="pandas").to_pandas()
    else:
        pairs = pair_fn(table)
    return _keep_best(rows, pairs["a"].to_numpy(), pairs["b"].to_numpy())


def _keep_best(rows: pd.DataFrame, a: np.ndarray, b: np.ndarray) -> dict[str, str]:
    parent = list(range(len(rows)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for x, y in zip(a.tolist(), b.tolist(), strict=True):
        parent[find(x)] = find(y)
    groups: dict[int, list[int]] = {}
    for i in {int(v) for v in np.concatenate([a, b])}:
        groups.setdefault(find(i), []).append(i)
    area = (rows["width"] * rows["height"]).tolist()
    seconds, keys = rows["seconds"].tolist(), rows["key"].tolist()
    out: dict[str, str] = {}
    for members in groups.values():
        # largest, then longest; the smallest key wins ties, so row order does not matter
        best = min(members, key=lambda i: (-area[i], -seconds[i], keys[i]))
        out |= {keys[i]: keys[best] for i in members if i != best}
    return out
