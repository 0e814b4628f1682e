"""Packing staged clips into webdataset shards, deterministically, and never rewriting one.

Shard membership depends only on the sorted sources and their clips, never on which worker finished
first, so the same input and config give the same shards byte for byte. Before a shard is
published, its membership is written to `_work/plan/clips-NNNNNN.json` (the intent); a shard whose
tar exists is final. A rerun replays the plan: clips already in a published shard stay there, and
clips that were not placed yet (a killed run's tail, a failed source that now succeeds, a new input
file) fill new shards after the last one. Published shards are never rewritten, because caption
and latent sidecars are made per shard number.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from data_pipeline.process import read_staged_samples
from infra.errors import JobError
from infra.shards import CLIPS, is_shard_name, shard_name, write_samples
from infra.storage import Storage
from infra.uris import join, relative_to

# Tar headers: 512 bytes per member (mp4, json, maybe txt) plus padding to 512.
_TAR_OVERHEAD = 3 * 1024


@dataclass
class Shard:
    index: int
    entries: list[tuple[str, str]] = field(default_factory=list)
    """(source_id, key) of each sample, in order."""
    nbytes: int = 0

    @property
    def name(self) -> str:
        return shard_name(CLIPS, self.index)


class ShardPlanner:
    """Greedy in-order packing: a shard closes before it would pass the byte or clip limit."""

    def __init__(self, max_bytes: int, max_clips: int, first_index: int = 0):
        self.max_bytes, self.max_clips = max_bytes, max_clips
        self.current = Shard(first_index)

    def add(
        self, record: dict[str, Any], placed: set[str] | frozenset[str] = frozenset()
    ) -> list[Shard]:
        """Adds one source's clips (except those already `placed`); returns the shards this closed."""
        closed = []
        for clip in record["clips"]:
            if clip["key"] in placed:
                continue
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


class PlanLog:
    """The membership of every shard this output has published (`_work/plan/`)."""

    def __init__(self, storage: Storage, output: str, work: str):
        self.storage, self.output, self.dir = storage, output, join(work, "plan")

    def load(self) -> dict[str, list[tuple[str, str]]]:
        """{shard name: entries} of the published shards. An intent whose tar never appeared (a
        kill between the two) is dropped: its clips are planned again."""
        published = {}
        for uri in self.storage.list(self.dir, suffix=".json"):
            name = relative_to(self.dir, uri)[: -len(".json")]
            if self.storage.exists(join(self.output, name)):
                published[name] = [tuple(e) for e in json.loads(self.storage.read_text(uri))]
            else:
                self.storage.delete(uri)
        tars = {
            relative_to(self.output, u)
            for u in self.storage.list(self.output, suffix=".tar")
            if is_shard_name(relative_to(self.output, u), CLIPS)
        }
        strays = sorted(tars - set(published))
        if strays:
            raise JobError(
                f"{self.output}: {len(strays)} shard(s) not written by this job's plan "
                f"(e.g. {strays[0]}); rerun with --overwrite to start over"
            )
        return published  # type: ignore[return-value]

    def write(self, shard: Shard) -> None:
        self.storage.write_text(join(self.dir, shard.name + ".json"), json.dumps(shard.entries))


def next_index(published: dict[str, Any]) -> int:
    return 1 + max((int(re.findall(r"\d+", n)[0]) for n in published), default=-1)


def write_shard(shard: Shard, storage: Storage, staging: str, output: str) -> str:
    """Writes one shard from the staged clips and publishes it atomically; returns its URI."""
    uri = join(output, shard.name)
    cache: dict[str, dict[str, dict[str, bytes]]] = {}

    def samples() -> Any:
        nonlocal cache
        for source_id, key in shard.entries:
            if source_id not in cache:
                cache = {source_id: read_staged_samples(storage, staging, source_id)}
            yield {"__key__": key, **cache[source_id][key]}

    write_samples(uri, samples(), storage)
    return uri
