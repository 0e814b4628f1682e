"""`spacetime shard`: the Ray job from a pile of videos to webdataset shards.

Sources are processed in parallel by Ray tasks (probe, scene analysis, clip encoding), each
staging its clips under `{output}/_work/staging/`. The driver consumes results in source order and
packs them into shards as soon as each shard's clips are known, so output is deterministic and a
killed job resumes: staged sources are not processed again and published shards are not rewritten.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

from tqdm import tqdm

from data_pipeline.config import ShardConfig
from data_pipeline.records import load_record, staged_paths
from data_pipeline.shards import PlanLog, Shard, ShardPlanner, next_index, write_shard
from data_pipeline.sources import Source, list_sources
from data_pipeline.tables import write_tables
from data_pipeline.worker import process_task
from infra.errors import JobError
from infra.provenance import RESUME, Rerun, check_or_record, finish_job
from infra.ray_cluster import local_work_dir, ray_session
from infra.shards import CLIPS, is_shard_name
from infra.storage import Storage, StorageError
from infra.storage_config import StorageConfig
from infra.uris import join, normalize, relative_to

log = logging.getLogger(__name__)

OUTPUT_FILES = ("manifest.parquet", "rejected.parquet", "errors.jsonl", "summary.json")
# Settings that change what is written; the others (parallelism, timeouts) may differ on a rerun.
_NOT_RECORDED = {"num_workers", "file_timeout_s", "worker_max_files", "worker_max_rss_mb"}


def _settings(input_uri: str, cfg: ShardConfig) -> dict[str, Any]:
    d = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _NOT_RECORDED}
    return {"input": input_uri, "shard": d}


def _run_tasks(
    order: list[int],
    sources: list[Source],
    cfg: ShardConfig,
    storage_cfg: StorageConfig,
    staging: str,
    workers: int,
) -> Iterator[tuple[int, dict[str, Any], str]]:
    """Processes `sources[i]` for i in `order` as plain Ray tasks, at most `workers` at a time,
    and yields results as they finish. Plain tasks rather than a Ray Data pipeline: Ray Data's
    streaming executor polls in the driver (13 s of CPU in a 77 s 1-worker run, py-spy) and ticks
    in every worker, and on a 2-core machine that CPU comes out of the decoding itself. Ray
    reuses its worker processes across tasks, so each keeps its decoding child (isolate.py)."""
    import ray

    # The task lives in a module without the decoding libraries: a worker imports only that.
    task = ray.remote(num_cpus=1)(process_task)
    pending = (task.remote(i, sources[i], cfg, storage_cfg, staging) for i in order)
    running = list(itertools.islice(pending, workers))
    while running:
        done, running = ray.wait(running, num_returns=1)
        # The next input goes out before the caller writes shards with this result.
        running += itertools.islice(pending, 1)
        yield ray.get(done[0])


def clean_output(storage: Storage, output: str) -> None:
    """Removes what a previous run wrote (and only that)."""
    for uri in storage.list(output):
        name = relative_to(output, uri)
        if name in OUTPUT_FILES or is_shard_name(name, CLIPS):
            storage.delete(uri)
    storage.delete_prefix(join(output, "_work"))


def _staged_state(
    storage: Storage, staging: str, sources: list[Source], placed: set[str], retry_failed: bool
) -> tuple[dict[int, dict[str, Any]], list[int]]:
    """Records a rerun can reuse (by source position) and the positions still to process. Stops
    on an input that changed or vanished after its clips were made: its old clips are in shards
    that are never rewritten."""
    reuse: dict[int, dict[str, Any]] = {}
    changed: list[str] = []
    for i, src in enumerate(sources):
        rec = load_record(storage, staging, src.source_id)
        if rec is None or (rec["error"] and retry_failed):
            continue
        if rec["clips"] and rec.get("version", "") != src.version:
            changed.append(f"{src.rel} (changed)")
        # Clips that are neither published nor staged any more cannot be placed: redo the source.
        if all(c["key"] in placed for c in rec["clips"]) or storage.exists(
            staged_paths(staging, src.source_id)[0]
        ):
            reuse[i] = rec
    current = {s.source_id for s in sources}
    for uri in storage.list(staging, suffix=".json"):
        sid = relative_to(staging, uri)[: -len(".json")]
        if sid not in current:
            rec = load_record(storage, staging, sid)
            if rec and rec["clips"] and any(c["key"] in placed for c in rec["clips"]):
                changed.append(f"{rec['rel']} (gone)")
    if changed:
        raise JobError(
            f"{len(changed)} input(s) changed since their clips were sharded: "
            f"{', '.join(changed[:5])}{' ...' if len(changed) > 5 else ''}; "
            "rerun with --overwrite to start over"
        )
    return reuse, [i for i in range(len(sources)) if i not in reuse]


def run_shard(
    input_uri: str,
    output: str,
    cfg: ShardConfig,
    storage_cfg: StorageConfig,
    ray_address: str | None = None,
    rerun: Rerun = RESUME,
) -> dict[str, Any]:
    """Shards `input_uri` into `output`. A rerun resumes: finished sources and published shards
    are kept, failed sources are tried again (unless `rerun.retry_failed` is off), new inputs are
    added.
    Raises JobError when no source gave a clip (after writing errors.jsonl and summary.json)."""
    t0 = time.monotonic()
    input_uri, output = normalize(input_uri), normalize(output)
    storage = Storage(storage_cfg)
    work = join(output, "_work")
    staging = join(work, "staging")
    if rerun.overwrite:
        clean_output(storage, output)
    listing = list_sources(input_uri, storage, cfg.extensions)
    sources = listing.sources
    if listing.ignored:
        log.info(
            "shard: ignored %d files by extension (%s)",
            sum(listing.ignored.values()),
            ", ".join(f"{n} {e}" for e, n in sorted(listing.ignored.items())),
        )
    if not sources:
        raise JobError(
            f"{input_uri}: no input videos found (extensions: {', '.join(cfg.extensions) or 'any'})"
        )
    try:
        check_or_record(
            storage, join(work, "job.json"), _settings(input_uri, cfg), output, "--overwrite"
        )
    except (OSError, StorageError) as e:
        raise JobError(f"{output}: output is not writable: {e}") from None
    plan_log = PlanLog(storage, output, work)
    published = plan_log.load()
    shard_of = {key: name for name, entries in published.items() for _, key in entries}
    waiting, todo = _staged_state(storage, staging, sources, set(shard_of), rerun.retry_failed)
    log.info(
        "shard: %d sources from %s (%d already staged, %d to process), %d shards published -> %s",
        len(sources),
        input_uri,
        len(waiting),
        len(todo),
        len(published),
        output,
    )

    records: list[dict[str, Any]] = []
    planner = ShardPlanner(cfg.shard_max_bytes, cfg.shard_max_clips, next_index(published))
    counts: Counter[str] = Counter()
    nodes: set[str] = set()

    def publish(shard_list: list[Shard]) -> None:
        for shard in shard_list:
            plan_log.write(shard)  # the intent first: a tar on disk is always in the log
            try:
                write_shard(shard, storage, staging, output)
            except FileNotFoundError as e:
                raise JobError(
                    f"{join(output, shard.name)} cannot be written: its staged clips are gone "
                    f"({e}); rerun with --overwrite"
                ) from None
            shard_of.update((key, shard.name) for _, key in shard.entries)

    def drain() -> None:
        # Shards follow source order, whatever order the workers finish in.
        while len(records) in waiting:
            rec = waiting.pop(len(records))
            records.append(rec)
            publish(planner.add(rec, shard_of.keys()))

    drain()
    if todo:
        with ray_session(ray_address, local_work_dir(output)) as resources:
            workers = cfg.num_workers or max(1, int(resources.get("CPU", 1)))
            # Biggest inputs first (longest-processing-time-first) so no worker is left with a
            # long file at the end; results are put back in source order by drain().
            order = sorted(todo, key=lambda i: -sources[i].size)
            # On a terminal the bar redraws in place; in a log file, a line every 10 s is enough.
            bar = tqdm(
                total=len(todo),
                desc="shard",
                unit="video",
                mininterval=0.5 if sys.stderr.isatty() else 10,
            )
            for pos, rec, node in _run_tasks(order, sources, cfg, storage_cfg, staging, workers):
                nodes.add(node)
                counts["clips"] += len(rec["clips"])
                counts["errors"] += rec["error"] is not None
                waiting[pos] = rec
                drain()
                bar.update(1)
                bar.set_postfix(
                    clips=counts["clips"],
                    errors=counts["errors"],
                    shards=len(set(shard_of.values())),
                )
            bar.close()
    last = planner.finish()
    publish([last] if last else [])
    unplaced = [c["key"] for r in records for c in r["clips"] if c["key"] not in shard_of]
    if len(records) != len(sources) or unplaced:
        raise JobError(
            f"{output}: {len(sources) - len(records)} sources without a result and "
            f"{len(unplaced)} clips without a shard; nothing was lost on disk (_work/), but the "
            "manifest cannot be written. This is a bug: please report it."
        )
    # The shards now hold the clips; keep only the small per-source records (a rerun reads them).
    for uri in storage.list(staging, suffix=".tar"):
        storage.delete(uri)

    summary = write_tables(storage, output, records, shard_of)
    summary.update(
        input=input_uri,
        output=output,
        resumed_sources=len(sources) - len(todo),
        processed_sources=len(todo),
        ignored_files=sum(listing.ignored.values()),
        ignored_by_extension=listing.ignored,
        nodes=sorted(nodes),
        wall_s=round(time.monotonic() - t0, 2),
    )
    s = summary
    return finish_job(
        storage,
        output,
        summary,
        log,
        f"shard: {s['sources']} videos -> {s['clips']} clips ({s['seconds_out']:.1f}s of "
        f"{s['seconds_in']:.1f}s source video) in {s['shards']} shards; {s['errors']} errors "
        f"{s['errors_by_reason'] or ''}; {s['ignored_files']} files ignored by extension; "
        f"{s['wall_s']:.1f}s",
        nothing=None
        if s["sources_with_clips"]
        else f"shard: none of the {s['sources']} "
        f"inputs gave a clip ({s['errors_by_reason']}); see {join(output, 'errors.jsonl')}",
    )
