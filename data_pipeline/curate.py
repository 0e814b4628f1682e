"""`spacetime curate`: a selection of sharded clips from their stored scores, never re-encoding.

Reads `manifest.parquet` of a `spacetime shard` output, applies the `curate.where` expression, the
score thresholds of `curate.filters` (the same rules as `shard.filters`), then near-duplicate
removal, and writes `{output}/selection.parquet` (the kept clips, with `shard_uri`), which
recaption, encode, train-vae and `train --clips` read in place of the shard folder, plus
`removed.parquet` (each removed clip with the rule and reason) and `summary.json`. Each clip is
charged to the first rule that removed it, so the summary's rows add up.

Near-duplicates: each clip carries a 64-bit perceptual hash per sampled frame. Candidate pairs
share one 16-bit band of a frame hash exactly (locality-sensitive hashing: a pair within a few
bits almost surely shares a band, and unrelated clips rarely do), are confirmed by the mean
Hamming distance, and clips of the same source are never paired (the parts of one long shot look
alike and are not copies). Each group of duplicates keeps its largest, longest copy.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import time
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from data_pipeline.config import CurateConfig
from data_pipeline.scores import rejection
from infra.errors import JobError
from infra.shards import SELECTION
from infra.storage import Storage, StorageConfig
from infra.uris import join, normalize

log = logging.getLogger(__name__)
SCORE_NAMES = ("flow", "camera", "text", "sharpness", "dark", "bright")


def near_duplicates(df: pd.DataFrame, max_distance: float) -> dict[str, str]:
    """{removed key: the kept key it duplicates} over clips with a perceptual hash."""
    rows = df[df["phash"].notna() & (df["phash"].str.len() > 0)].reset_index(drop=True)
    if len(rows) < 2:
        return {}
    bands = [
        (i, f"{len(h)}:{j}:{h[j : j + 4]}")
        for i, h in enumerate(rows["phash"])
        for j in range(0, len(h), 4)
    ]
    buckets = pd.DataFrame(bands, columns=["row", "band"]).groupby("band")["row"].unique()
    parent = list(range(len(rows)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    hashes = rows["phash"].tolist()
    sources = rows["source_id"].tolist()
    checked: set[tuple[int, int]] = set()
    for members in buckets:
        if len(members) < 2:
            continue
        for a_i, a in enumerate(members):
            for b in members[a_i + 1 :]:
                pair = (min(a, b), max(a, b))
                if pair in checked or sources[a] == sources[b]:
                    continue
                checked.add(pair)
                if _distance(hashes[a], hashes[b]) <= max_distance:
                    parent[find(a)] = find(b)
    groups: dict[int, list[int]] = {}
    for i in range(len(rows)):
        groups.setdefault(find(i), []).append(i)
    out: dict[str, str] = {}
    for members in groups.values():
        if len(members) < 2:
            continue
        best = max(
            members,
            key=lambda i: (
                rows.at[i, "width"] * rows.at[i, "height"],
                rows.at[i, "seconds"],
                # the smallest key wins ties, so the choice does not depend on row order
                [-ord(c) for c in rows.at[i, "key"]],
            ),
        )
        out |= {rows.at[i, "key"]: rows.at[best, "key"] for i in members if i != best}
    return out


def _distance(a: str, b: str) -> float:
    """Mean Hamming distance per 64-bit frame hash."""
    if len(a) != len(b):
        return 64.0
    return (int(a, 16) ^ int(b, 16)).bit_count() / (len(a) // 16)


def curate(df: pd.DataFrame, cfg: CurateConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(kept rows, removed rows with `rule` and `reason`) of a manifest."""
    rule = pd.Series([""] * len(df), index=df.index, dtype=object)
    reason = pd.Series([""] * len(df), index=df.index, dtype=object)
    if cfg.where:
        try:
            keep = df.eval(cfg.where)
        except Exception as e:
            raise JobError(f"curate.where {cfg.where!r}: {type(e).__name__}: {e}") from None
        if not isinstance(keep, pd.Series) or keep.dtype != bool:
            raise JobError(f"curate.where {cfg.where!r} is not a true/false test of each clip")
        rule[~keep], reason[~keep] = "where", f"not ({cfg.where})"
    for i, row in zip(df.index, df[list(SCORE_NAMES)].to_dict("records"), strict=True):
        if rule[i]:
            continue
        scores = {k: (None if _missing(v) else v) for k, v in row.items()}
        failed = rejection(scores, cfg.filters)
        if failed is not None:
            rule[i], reason[i] = failed
    if cfg.dedup:
        live = df[rule == ""]
        index_of = dict(zip(live["key"], live.index, strict=True))
        for key, kept in near_duplicates(live, cfg.dedup_distance).items():
            rule[index_of[key]], reason[index_of[key]] = "duplicate", f"duplicate of {kept}"
    removed = df[rule != ""].assign(rule=rule[rule != ""], reason=reason[rule != ""])
    return df[rule == ""], removed


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v))


def run_curate(
    shards: str, output: str, cfg: CurateConfig, storage_cfg: StorageConfig
) -> dict[str, Any]:
    t0 = time.monotonic()
    shards, output = normalize(shards), normalize(output)
    storage = Storage(storage_cfg)
    try:
        data = storage.read_bytes(join(shards, "manifest.parquet"))
    except FileNotFoundError:
        raise JobError(
            f"{shards}: no manifest.parquet (is it a `spacetime shard` output?)"
        ) from None
    df = pq.read_table(io.BytesIO(data)).to_pandas()
    if "phash" not in df.columns:
        raise JobError(f"{shards}: manifest.parquet has no scores; shard again with this version")
    df["shard_uri"] = [join(shards, s) for s in df["shard"]]
    kept, removed = curate(df, cfg)
    for name, table in ((SELECTION, kept), ("removed.parquet", removed)):
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pandas(table, preserve_index=False), buf)
        storage.write_bytes(join(output, name), buf.getvalue())
    by_rule = {
        r: {"clips": len(g), "hours": round(float(g["seconds"].sum()) / 3600, 4)}
        for r, g in removed.groupby("rule")
    }
    summary = {
        "shards": shards,
        "output": output,
        "settings": dataclasses.asdict(cfg),
        "clips_in": len(df),
        "hours_in": round(float(df["seconds"].sum()) / 3600, 4),
        "clips_kept": len(kept),
        "hours_kept": round(float(kept["seconds"].sum()) / 3600, 4),
        "removed_by_rule": by_rule,
        "wall_s": round(time.monotonic() - t0, 2),
    }
    storage.write_text(join(output, "summary.json"), json.dumps(summary, indent=2, sort_keys=True))
    lines = [f"{'rule':<14}{'clips':>8}{'hours':>10}"]
    lines += [f"{r:<14}{v['clips']:>8}{v['hours']:>10.3f}" for r, v in sorted(by_rule.items())]
    lines.append(f"{'kept':<14}{len(kept):>8}{summary['hours_kept']:>10.3f}")
    log.info("curate: removed per rule\n%s", "\n".join(lines))
    log.info(
        "curate: %d of %d clips kept (%.3f of %.3f hours) -> %s; %.1fs",
        len(kept),
        len(df),
        summary["hours_kept"],
        summary["hours_in"],
        join(output, SELECTION),
        summary["wall_s"],
    )
    if not len(kept):
        raise JobError(
            f"curate: no clip of {len(df)} passed; see {join(output, 'removed.parquet')}"
        )
    return summary
