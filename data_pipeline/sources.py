"""Listing the inputs of `spacetime shard`: a folder, an s3:// prefix, or a manifest file."""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path

from infra.storage import Storage, is_s3, join

MANIFEST_SUFFIXES = (".jsonl", ".csv", ".parquet")


@dataclass(frozen=True)
class Source:
    """One input video."""

    uri: str
    """Where to read it (local path or s3:// URI)."""
    rel: str
    """Its name relative to the input root (what the key is derived from, stable across hosts)."""
    caption: str | None = None
    """Caption from the manifest, if any."""
    size: int = 0
    """Bytes, where the listing knows it (big inputs are scheduled first)."""

    @property
    def source_id(self) -> str:
        return source_id(self.rel)


def source_id(rel: str) -> str:
    """A stable id without dots: a readable stem plus a hash of the relative path."""
    stem = rel.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_")[:40] or "video"
    digest = hashlib.sha1(rel.encode("utf-8")).hexdigest()[:10]
    return f"{stem}-{digest}"


def list_sources(input_uri: str, storage: Storage, extensions: list[str]) -> list[Source]:
    """All inputs, sorted by relative path so every run sees them in the same order."""
    if input_uri.lower().endswith(MANIFEST_SUFFIXES):
        return _from_manifest(input_uri, storage)
    listing = storage.list_with_sizes(input_uri)
    if not listing and not storage.exists(input_uri):
        raise FileNotFoundError(f"{input_uri}: input folder or prefix not found or empty")
    exts = tuple(e.lower() for e in extensions)
    root = input_uri.rstrip("/")
    out = []
    for uri, size in listing:
        rel = uri[len(root) :].lstrip("/") if uri.startswith(root) else uri.rsplit("/", 1)[-1]
        rel = rel or uri.rsplit("/", 1)[-1]
        if any(part.startswith(".") for part in rel.split("/")):
            continue  # hidden files and our own temporaries
        if exts and not rel.lower().endswith(exts):
            continue
        out.append(Source(uri=uri, rel=rel, size=size))
    return sorted(out, key=lambda s: s.rel)


def _from_manifest(uri: str, storage: Storage) -> list[Source]:
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    data = storage.read_bytes(uri)
    lower = uri.lower()
    try:
        if lower.endswith(".parquet"):
            table = pq.read_table(io.BytesIO(data))
        elif lower.endswith(".csv"):
            table = pacsv.read_csv(io.BytesIO(data))
        else:
            table = pajson.read_json(io.BytesIO(data))
    except Exception as e:  # pyarrow raises several types for malformed files
        raise ValueError(f"{uri}: cannot read manifest: {e}") from None
    if "path" not in table.column_names:
        raise ValueError(
            f"{uri}: manifest needs a 'path' column (has: {', '.join(table.column_names)})"
        )
    paths = table.column("path").to_pylist()
    captions = (
        table.column("caption").to_pylist()
        if "caption" in table.column_names
        else [None] * len(paths)
    )
    base = uri.rsplit("/", 1)[0] if "/" in uri else "."
    out = []
    for i, (p, cap) in enumerate(zip(paths, captions, strict=True)):
        if not p:
            raise ValueError(f"{uri}: row {i} has an empty path")
        p = str(p)
        full = p if (is_s3(p) or p.startswith("/")) else join(base, p)
        size = Path(full).stat().st_size if not is_s3(full) and Path(full).is_file() else 0
        out.append(Source(uri=full, rel=p, caption=None if cap is None else str(cap), size=size))
    seen = set()
    for s in out:
        if s.rel in seen:
            raise ValueError(f"{uri}: path listed twice: {s.rel}")
        seen.add(s.rel)
    return sorted(out, key=lambda s: s.rel)
