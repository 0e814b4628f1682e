"""`spacetime curate`: a selection of sharded clips from their stored scores, never re-encoding.

Reads `manifest.parquet` of a `spacetime shard` output, applies the `curate.where` expression, the
score thresholds of `curate.filters` (the same rules as `shard.filters`), then near-duplicate
removal, and writes `{output}/selection.parquet` (the kept clips, with `shard_uri`), which
recaption, encode, train-vae and `train --clips` read in place of the shard folder, plus
`removed.parquet` (each removed clip with the rule and reason) and `summary.json`. Each clip is
charged to the first rule that removed it, so the summary's rows add up.

Near-duplicates (data_pipeline/dedup.py) are searched among the clips the other rules kept, so
a copy whose better twin was filtered out stays.
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
from data_pipeline.dedup import near_duplicates
from data_pipeline.scores import rejection
from infra.errors import JobError
from infra.ray_cluster import local_work_dir, ray_session
from infra.shards import SELECTION
from infra.storage import Storage
from infra.storage_config import StorageConfig
from infra.uris import join, normalize

log = logging.getLogger(__name__)
SCORE_NAMES = ("flow", "camera", "text", "sharpness", "dark", "bright")


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
        found = near_duplicates(live, cfg.dedup_distance, cfg.dedup_partitions)
        for key, kept in found.items():
            rule[index_of[key]], reason[index_of[key]] = "duplicate", f"duplicate of {kept}"
    removed = df[rule != ""].assign(rule=rule[rule != ""], reason=reason[rule != ""])
    return df[rule == ""], removed


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v))


def run_curate(
    shards: str,
    output: str,
    cfg: CurateConfig,
    storage_cfg: StorageConfig,
    ray_address: str | None = None,
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
    if cfg.dedup and cfg.dedup_partitions:
        with ray_session(ray_address, local_work_dir(output)):
            kept, removed = curate(df, cfg)
    else:
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
