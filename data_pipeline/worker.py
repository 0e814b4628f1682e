"""What a Ray worker of the shard job runs: one source, processed in an isolated child.

This module imports neither PyAV, OpenCV nor webdataset (which imports torch): the worker hands
the decoding to its child process (which imports data_pipeline.process), and would otherwise pay
~1.7 s of imports it never uses, on cores the decoding needs.
"""

from __future__ import annotations

import json
import time
from typing import Any

from data_pipeline.config import ShardConfig
from data_pipeline.isolate import Overrun, run_isolated
from data_pipeline.records import new_record, staged_paths
from data_pipeline.sources import Source
from infra.storage import Storage
from infra.storage_config import StorageConfig


def _stage(source: Source, cfg: ShardConfig, storage: Storage, staging: str) -> dict[str, Any]:
    from data_pipeline.process import stage_source  # preloaded in the child (isolate.py)

    return stage_source(source, cfg, storage, staging)


def process_source(
    source: Source, cfg: ShardConfig, storage: Storage, staging: str, isolate: bool = True
) -> dict[str, Any]:
    """Processes one source and stages its result (the caller decides whether it needs it).

    With `isolate`, the work runs in a child process under a hard time limit, so a file that hangs
    or crashes FFmpeg costs only its own record.
    """
    if not isolate:
        return _stage(source, cfg, storage, staging)
    t0 = time.monotonic()
    try:
        return run_isolated(
            _stage,
            source,
            cfg,
            storage,
            staging,
            timeout=cfg.file_timeout_s * 1.1 + 10,
            max_calls=cfg.worker_max_files,
            max_rss_mb=cfg.worker_max_rss_mb,
        )
    except Overrun as e:
        record = new_record(source)
        record["error"] = {"stage": "process", "reason": e.reason}
        record["elapsed_s"] = round(time.monotonic() - t0, 3)
        storage.write_text(
            staged_paths(staging, source.source_id)[1], json.dumps(record, sort_keys=True)
        )
        return record


def process_task(
    pos: int, source: Source, cfg: ShardConfig, storage_cfg: StorageConfig, staging: str
) -> tuple[int, dict[str, Any], str]:
    """A shard job's Ray task: one source in, (its position, its record, the node's address)
    out."""
    import ray  # Ray takes seconds to import; its workers have it already

    record = process_source(source, cfg, Storage(storage_cfg), staging)
    return pos, record, ray.util.get_node_ip_address()
