"""`spacetime shard`: the Ray job from a pile of videos to webdataset shards.

Sources are processed in parallel by Ray Data tasks (probe, scene analysis, clip encoding), each
staging its clips under `{output}/_work/staging/`. The driver consumes results in source order and
packs them into shards as soon as each shard's clips are known, so output is deterministic and a
killed job resumes: staged sources are not processed again and published shards are not rewritten.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import re
import sys
import time
from collections import Counter
from typing import Any

from tqdm import tqdm

from data_pipeline.config import ShardConfig
from data_pipeline.process import load_record, process_source
from data_pipeline.shards import Shard, ShardPlanner, write_shard
from data_pipeline.sources import Source, list_sources
from infra.errors import JobError
from infra.ray_cluster import local_work_dir, ray_session
from infra.storage import Storage, StorageConfig, join

log = logging.getLogger(__name__)

OUTPUT_FILES = ("manifest.parquet", "errors.jsonl", "summary.json")
# Settings that change what is written; the others (parallelism, timeouts) may differ on a rerun.
_NOT_IN_FINGERPRINT = {"num_workers", "file_timeout_s"}


def _fingerprint(input_uri: str, cfg: ShardConfig) -> str:
    d = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _NOT_IN_FINGERPRINT}
    return hashlib.sha256(
        json.dumps({"input": input_uri, "config": d}, sort_keys=True).encode()
    ).hexdigest()[:16]


def _process_row(
    row: dict[str, Any], cfg: dict[str, Any], storage: dict[str, Any], staging: str
) -> dict[str, Any]:
    """Ray Data UDF: one source row in, one record row out (as JSON, to keep the schema flat)."""
    source = Source(uri=row["uri"], rel=row["rel"], caption=row.get("caption"))
    record = process_source(source, ShardConfig(**cfg), Storage(StorageConfig(**storage)), staging)
    import ray

    return {
        "source_id": source.source_id,
        "record": json.dumps(record),
        "node": ray.util.get_node_ip_address(),
    }


def clean_output(storage: Storage, output: str) -> None:
    """Removes what a previous run wrote (and only that)."""
    for uri in storage.list(output):
        name = uri[len(output.rstrip("/")) + 1 :]
        if (
            name in OUTPUT_FILES
            or name.startswith("_work/")
            or re.fullmatch(r"clips-\d{6}\.tar", name)
        ):
            storage.delete(uri)
    storage.delete_prefix(join(output, "_work"))


def run_shard(
    input_uri: str,
    output: str,
    cfg: ShardConfig,
    storage_cfg: StorageConfig,
    ray_address: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    t0 = time.monotonic()
    storage = Storage(storage_cfg)
    work = join(output, "_work")
    staging = join(work, "staging")
    if overwrite:
        clean_output(storage, output)
    sources = list_sources(input_uri, storage, cfg.extensions)
    if not sources:
        raise JobError(
            f"{input_uri}: no input videos found (extensions: {', '.join(cfg.extensions) or 'any'})"
        )
    fp = _fingerprint(input_uri, cfg)
    job_uri = join(work, "job.json")
    try:
        if storage.exists(job_uri):
            prev = json.loads(storage.read_text(job_uri))
            if prev.get("fingerprint") != fp:
                raise JobError(
                    f"{output} holds output of a different input or config ({prev.get('input')}); "
                    "rerun with --overwrite to start over"
                )
        else:
            storage.write_text(
                job_uri,
                json.dumps(
                    {"input": input_uri, "fingerprint": fp, "config": dataclasses.asdict(cfg)},
                    indent=2,
                ),
            )
    except (OSError, RuntimeError) as e:
        if isinstance(e, JobError):
            raise
        raise JobError(f"{output}: output is not writable: {e}") from None

    resumed = sum(1 for s in sources if load_record(storage, staging, s.source_id) is not None)
    log.info(
        "shard: %d sources from %s (%d already staged) -> %s",
        len(sources),
        input_uri,
        resumed,
        output,
    )

    records: list[dict[str, Any]] = []
    planner = ShardPlanner(cfg.shard_max_bytes, cfg.shard_max_clips)
    shards: list[str] = []
    shard_of: dict[str, str] = {}
    counts: Counter[str] = Counter()
    nodes: set[str] = set()

    def publish(shard_list: list[Shard]) -> None:
        for shard in shard_list:
            uri = join(output, shard.name)
            if not storage.exists(uri):  # published shards are whole; a rerun leaves them be
                try:
                    write_shard(shard, storage, staging, output)
                except FileNotFoundError as e:
                    raise JobError(
                        f"{uri} is missing and its staged clips are gone ({e}); rerun with --overwrite"
                    ) from None
            shards.append(uri)
            shard_of.update((key, shard.name) for _, key in shard.entries)

    with ray_session(ray_address, local_work_dir(output)) as resources:
        import ray

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        # Biggest inputs first (longest-processing-time-first) so no worker is left with a long
        # file at the end; results are put back in source order below.
        by_size = sorted(sources, key=lambda s: -s.size)
        items = [{"uri": s.uri, "rel": s.rel, "caption": s.caption} for s in by_size]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        workers = cfg.num_workers or max(1, int(resources.get("CPU", 1)))
        ds = ds.map(
            _process_row,
            fn_kwargs={
                "cfg": dataclasses.asdict(cfg),
                "storage": dataclasses.asdict(storage_cfg),
                "staging": staging,
            },
            num_cpus=1,
            compute=ray.data.TaskPoolStrategy(size=workers),
        )
        # On a terminal the bar redraws in place; in a log file, a line every 10 s is enough.
        bar = tqdm(
            total=len(sources),
            desc="shard",
            unit="video",
            mininterval=0.5 if sys.stderr.isatty() else 10,
        )
        position = {s.rel: i for i, s in enumerate(sources)}
        waiting: dict[int, dict[str, Any]] = {}
        for row in ds.iter_rows():
            rec = json.loads(row["record"])
            nodes.add(row["node"])
            counts["clips"] += len(rec["clips"])
            counts["errors"] += rec["error"] is not None
            waiting[position[rec["rel"]]] = rec
            # Shards follow source order, whatever order the workers finish in.
            while len(records) in waiting:
                rec = waiting.pop(len(records))
                records.append(rec)
                publish(planner.add(rec))
            bar.update(1)
            bar.set_postfix(clips=counts["clips"], errors=counts["errors"], shards=len(shards))
        bar.close()
    last = planner.finish()
    publish([last] if last else [])
    # The shards now hold the clips; keep only the small per-source records (a rerun reads them).
    for uri in storage.list(staging, suffix=".tar"):
        storage.delete(uri)

    summary = _write_tables(storage, output, records, shards, shard_of)
    summary.update(
        input=input_uri,
        output=output,
        resumed_sources=resumed,
        nodes=sorted(nodes),
        wall_s=round(time.monotonic() - t0, 2),
    )
    storage.write_text(join(output, "summary.json"), json.dumps(summary, indent=2, sort_keys=True))
    return summary


def _reason_class(err: dict[str, str]) -> str:
    head = err["reason"].split(":")[0].split(" (")[0]
    return f"{err['stage']}: {re.sub(r'[0-9]+', 'N', head)}"


def _write_tables(
    storage: Storage,
    output: str,
    records: list[dict[str, Any]],
    shards: list[str],
    shard_of: dict[str, str],
) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {**c, "source": rec["source"], "source_id": rec["source_id"]}
        for rec in records
        for c in rec["clips"]
    ]
    columns = ["key", "shard", "frames", "fps", "height", "width", "seconds", "source", "sha256",
               "source_id", "scene", "clip", "start_s", "end_s", "bytes"]  # fmt: skip
    table = pa.table(
        {col: [shard_of[r["key"]] if col == "shard" else r[col] for r in rows] for col in columns}
    )
    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.write_bytes(join(output, "manifest.parquet"), buf.getvalue())

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
        "seconds_in": round(sum(r["seconds_in"] for r in records), 3),
        "seconds_out": round(sum(c["seconds"] for c in rows), 3),
        "shards": len(shards),
        "bytes_out": sum(c["bytes"] for c in rows),
    }
