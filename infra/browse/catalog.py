"""What `spacetime browse` was given: each root recognised by its contents and loaded once.

- clips: a `spacetime shard` output (manifest.parquet + clips-*.tar; rejected.parquet, errors.jsonl)
- selection: a `spacetime curate` output (selection.parquet, removed.parquet)
- captions: a caption set (captions-*.tar)
- latents: a latent set (latents-*.tar with their index files)
- run: a training run folder (checkpoints/, tensorboard/, previews/; local only)

Tables come from the parquet manifests, read once into memory, so a page of a 100k-clip dataset
is a slice, not a scan of the tars.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from infra.shards import CAPTIONS, CLIPS, LATENTS, SELECTION, caption_texts, is_shard_name
from infra.storage import Storage
from infra.uris import is_s3, join, normalize, relative_to


@dataclass
class Root:
    kind: str
    uri: str
    name: str
    clips: pd.DataFrame | None = None
    """clips/selection: one row per clip, with `shard_uri`."""
    rejected: pd.DataFrame | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    captions: dict[str, str] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


def _parquet(storage: Storage, uri: str) -> pd.DataFrame | None:
    if not storage.exists(uri):
        return None
    return pq.read_table(io.BytesIO(storage.read_bytes(uri))).to_pandas()


def _json(storage: Storage, uri: str) -> Any:
    try:
        return json.loads(storage.read_text(uri))
    except (FileNotFoundError, ValueError):
        return None


def recognise(uri: str, storage: Storage) -> Root:
    """Loads one root; ValueError when it is none of the kinds above."""
    uri = normalize(uri)
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    if not is_s3(uri) and not Path(uri).is_dir():
        raise ValueError(f"{uri}: not a folder")
    names = [relative_to(uri, u) for u in storage.list(uri)]
    top = {n.split("/", 1)[0] for n in names}
    if SELECTION in top:
        df = _parquet(storage, join(uri, SELECTION))
        removed = _parquet(storage, join(uri, "removed.parquet"))
        return Root("selection", uri, name, clips=df, rejected=removed, info=_summary(storage, uri))
    if "manifest.parquet" in top:
        df = _parquet(storage, join(uri, "manifest.parquet"))
        assert df is not None
        df["shard_uri"] = [join(uri, s) for s in df["shard"]]
        errors = []
        if storage.exists(join(uri, "errors.jsonl")):
            text = storage.read_text(join(uri, "errors.jsonl"))
            errors = [json.loads(line) for line in text.splitlines() if line.strip()]
        return Root(
            "clips",
            uri,
            name,
            clips=df,
            rejected=_parquet(storage, join(uri, "rejected.parquet")),
            errors=errors,
            info=_summary(storage, uri),
        )
    if any(is_shard_name(n, CAPTIONS) for n in top):
        job = _json(storage, join(uri, "job.json")) or {}
        return Root(
            "captions",
            uri,
            name,
            captions=caption_texts(uri, storage),
            info=job.get("settings", {}),
        )
    if any(is_shard_name(n, LATENTS) for n in top):
        return Root("latents", uri, name, info=_summary(storage, uri))
    if not is_s3(uri) and top & {"checkpoints", "tensorboard", "previews"}:
        return Root("run", uri, name)
    if any(is_shard_name(n, CLIPS) for n in top):
        raise ValueError(f"{uri}: clip shards without manifest.parquet (an unfinished shard job?)")
    raise ValueError(
        f"{uri}: not a clip shard folder, selection, caption set, latent set or run folder"
    )


def _summary(storage: Storage, uri: str) -> dict[str, Any]:
    return _json(storage, join(uri, "summary.json")) or {}


class Catalog:
    """The roots, numbered in the order given, and the caption sets to show beside clips."""

    def __init__(self, uris: list[str], storage: Storage):
        self.storage = storage
        self.roots = [recognise(u, storage) for u in uris]
        self.caption_sets = [r for r in self.roots if r.kind == "captions"]
        self._shard_of: dict[int, dict[str, str]] = {}

    def root(self, i: int, *kinds: str) -> Root:
        if not 0 <= i < len(self.roots) or (kinds and self.roots[i].kind not in kinds):
            raise KeyError(i)
        return self.roots[i]

    def shard_of(self, i: int, key: str) -> str:
        """The shard URI holding clip `key` of root `i`; KeyError if it has no such clip."""
        if i not in self._shard_of:
            df = self.root(i, "clips", "selection").clips
            assert df is not None
            self._shard_of[i] = dict(zip(df["key"], df["shard_uri"], strict=True))
        return self._shard_of[i][key]
