"""Packing staged clips into webdataset shards, deterministically.

Shard membership depends only on the sorted sources and their clips, never on which worker finished
first, so the same input and config give the same shards byte for byte and a rerun can skip shards
that are already published (they are whole: each is written under a temporary name and renamed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import webdataset as wds

from data_pipeline.process import read_staged_samples
from infra.storage import Storage, join

# Tar headers: 512 bytes per member (mp4, json, maybe txt) plus padding to 512.
_TAR_OVERHEAD = 3 * 1024


def shard_name(index: int) -> str:
    return f"clips-{index:06d}.tar"


@dataclass
class Shard:
    index: int
    entries: list[tuple[str, str]] = field(default_factory=list)
    """(source_id, key) of each sample, in order."""
    nbytes: int = 0

    @property
    def name(self) -> str:
        return shard_name(self.index)


class ShardPlanner:
    """Greedy in-order packing: a shard closes before it would pass the byte or clip limit."""

    def __init__(self, max_bytes: int, max_clips: int):
        self.max_bytes, self.max_clips = max_bytes, max_clips
        self.current = Shard(0)

    def add(self, record: dict[str, Any]) -> list[Shard]:
        """Adds one source's clips; returns the shards that this closed."""
        closed = []
        for clip in record["clips"]:
            size = clip["bytes"] + _TAR_OVERHEAD
            cur = self.current
            if cur.entries and (
                cur.nbytes + size > self.max_bytes or len(cur.entries) >= self.max_clips
            ):
                closed.append(cur)
                self.current = Shard(cur.index + 1)
            self.current.entries.append((record["source_id"], clip["key"]))
            self.current.nbytes += size
        return closed

    def finish(self) -> Shard | None:
        return self.current if self.current.entries else None


def write_shard(shard: Shard, storage: Storage, staging: str, output: str) -> str:
    """Writes one shard from the staged clips and publishes it atomically; returns its URI."""
    uri = join(output, shard.name)
    cache: dict[str, dict[str, dict[str, bytes]]] = {}
    with storage.atomic_writer(uri) as tmp, open(tmp, "wb") as f:
        writer = wds.TarWriter(f, mtime=0, user="", group="")
        for source_id, key in shard.entries:
            if source_id not in cache:
                cache = {source_id: read_staged_samples(storage, staging, source_id)}
            writer.write({"__key__": key, **cache[source_id][key]})
        writer.close()
    return uri
