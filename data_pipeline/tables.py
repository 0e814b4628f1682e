"""The tables `spacetime shard` writes beside its shards: manifest.parquet (one row per clip, with
its scores), rejected.parquet (clips a `shard.filters` threshold turned away, with the reason and
their scores), errors.jsonl (inputs that gave no clip, with the stage and reason) and the counts of
summary.json."""

from __future__ import annotations

import io
import json
import re
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from infra.storage import Storage
from infra.uris import join

# Score columns of manifest.parquet and rejected.parquet (data_pipeline/scores.py says what each is).
SCORE_COLUMNS = {
    "motion": pa.float64(),
    "flow": pa.float64(),
    "camera": pa.string(),
    "pan": pa.float64(),
    "tilt": pa.float64(),
    "zoom": pa.float64(),
    "text": pa.float64(),
    "sharpness": pa.float64(),
    "dark": pa.float64(),
    "bright": pa.float64(),
    "phash": pa.string(),
}

_REJECTED_TYPES = {
    "key": pa.string(),
    "rule": pa.string(),
    "reason": pa.string(),
    "source": pa.string(),
    "source_id": pa.string(),
    "start_s": pa.float64(),
    "end_s": pa.float64(),
    "frames": pa.int64(),
    "seconds": pa.float64(),
}


def _score_columns(rows: list[dict[str, Any]]) -> dict[str, pa.Array]:
    # Rows staged by an older version have no scores: null, never made up.
    return {
        col: pa.array([r.get("scores", {}).get(col) for r in rows], tp)
        for col, tp in SCORE_COLUMNS.items()
    }


def _write_parquet(storage: Storage, uri: str, table: pa.Table) -> None:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.write_bytes(uri, buf.getvalue())


def _reason_class(err: dict[str, str]) -> str:
    head = err["reason"].split(":")[0].split(" (")[0]
    return f"{err['stage']}: {re.sub(r'[0-9]+', 'N', head)}"


def write_tables(
    storage: Storage, output: str, records: list[dict[str, Any]], shard_of: dict[str, str]
) -> dict[str, Any]:
    """manifest.parquet and errors.jsonl from the records; returns the summary's counts."""

    rows = [
        {**c, "source": rec["source"], "source_id": rec["source_id"], "caption": rec["caption"]}
        for rec in records
        for c in rec["clips"]
    ]
    columns = [
        "key",
        "shard",
        "frames",
        "fps",
        "height",
        "width",
        "seconds",
        "source",
        "sha256",
        "source_id",
        "scene",
        "clip",
        "start_s",
        "end_s",
        "bytes",
    ]
    table = pa.table(
        {col: [shard_of[r["key"]] if col == "shard" else r[col] for r in rows] for col in columns}
        | {"caption": pa.array([r["caption"] for r in rows], pa.string())}  # the source caption
        | _score_columns(rows)
    )
    _write_parquet(storage, join(output, "manifest.parquet"), table)
    rejected = [
        {**c, "source": rec["source"], "source_id": rec["source_id"]}
        for rec in records
        for c in rec.get("rejected", [])
    ]
    fields = [
        "key",
        "rule",
        "reason",
        "source",
        "source_id",
        "start_s",
        "end_s",
        "frames",
        "seconds",
    ]
    rej = pa.table(
        {col: pa.array([r[col] for r in rejected], _REJECTED_TYPES[col]) for col in fields}
        | {col: pa.array([r[col] for r in rejected], pa.int64()) for col in ("width", "height")}
        | _score_columns(rejected)
    )
    _write_parquet(storage, join(output, "rejected.parquet"), rej)

    errors = sorted(
        (
            {"path": r["source"], "stage": r["error"]["stage"], "reason": r["error"]["reason"]}
            for r in records
            if r["error"]
        ),
        key=lambda e: e["path"],
    )
    storage.write_text(
        join(output, "errors.jsonl"), "".join(json.dumps(e, sort_keys=True) + "\n" for e in errors)
    )

    dropped: Counter[str] = Counter()
    for r in records:
        dropped.update(r["dropped"])
    order = ("read", "probe", "analyse", "encode", "filter")
    stage_counts: Counter[str] = Counter()
    for r in records:
        failed_at = r["error"]["stage"] if r["error"] else None
        # A timeout, crash or internal error may have struck at any stage: count no stage passed.
        upto = (
            len(order)
            if failed_at is None
            else (order.index(failed_at) if failed_at in order else 0)
        )
        stage_counts.update(f"passed_{stage}" for stage in order[:upto])
    return {
        "sources": len(records),
        "sources_with_clips": sum(1 for r in records if r["clips"]),
        "errors": len(errors),
        "errors_by_reason": dict(Counter(_reason_class(r["error"]) for r in records if r["error"])),
        "stages": dict(stage_counts),
        "scenes": sum(r["scenes"] for r in records),
        "clips": len(rows),
        "clips_dropped": dict(dropped),
        "clips_rejected": dict(Counter(r["rule"] for r in rejected)),
        "seconds_in": round(sum(r["seconds_in"] for r in records), 3),
        "seconds_out": round(sum(c["seconds"] for c in rows), 3),
        "shards": len(set(shard_of.values())),
        "bytes_out": sum(c["bytes"] for c in rows),
    }
