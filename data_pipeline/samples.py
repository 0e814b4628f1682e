"""One encoded clip to a staged sample, or to a rejected row: what a clip's record holds."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from data_pipeline.config import ShardConfig
from data_pipeline.scores import rejection
from data_pipeline.sources import Source

SCHEMA_VERSION = 3  # 2: curation scores and the border crop; 3: still images as 1-frame clips
# What the per-source record (and so manifest.parquet) keeps of each clip's {key}.json.
RECORD_FIELDS = (
    "key",
    "scene",
    "clip",
    "frames",
    "fps",
    "seconds",
    "width",
    "height",
    "start_s",
    "end_s",
)


def keep_or_reject(
    meta: dict[str, Any], data: bytes, source: Source, cfg: ShardConfig, record: dict[str, Any]
) -> dict[str, Any] | None:
    """The webdataset sample of a clip that passes `shard.filters` (its row added to the record's
    clips), or None for one that fails (its row, reason and scores added to the record's rejected:
    rejected.parquet, so nothing is dropped silently)."""
    failed = rejection(meta["scores"], cfg.filters)
    if failed is not None:
        record["dropped"]["filtered"] = record["dropped"].get("filtered", 0) + 1
        record["rejected"].append(
            {k: meta[k] for k in ("key", "frames", "seconds", "width", "height")}
            | {"start_s": meta["start_s"], "end_s": meta["end_s"]}
            | {"rule": failed[0], "reason": failed[1], "scores": meta["scores"]}
        )
        return None
    record["clips"].append(
        {k: meta[k] for k in RECORD_FIELDS}
        | {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "scores": meta["scores"]}
    )
    sample = {
        "__key__": meta["key"],
        "mp4": data,
        "json": json.dumps(meta, sort_keys=True).encode(),
    }
    if source.caption:
        sample["txt"] = source.caption.encode("utf-8")
    return sample
