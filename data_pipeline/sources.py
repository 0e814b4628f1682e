"""Listing the inputs of `spacetime shard`: a folder, an s3:// prefix, or a manifest file."""

from __future__ import annotations

import hashlib
import io
import posixpath
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from infra.storage import Storage
from infra.uris import is_s3, join, normalize, relative_to

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
    version: str = ""
    """What changes with the content (mtime or ETag), where the listing knows it."""

    @property
    def source_id(self) -> str:
        return source_id(self.rel)


def source_id(rel: str) -> str:
    """A stable id without dots: a readable stem plus a hash of the relative path."""
    stem = rel.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_")[:40] or "video"
    digest = hashlib.sha1(rel.encode("utf-8")).hexdigest()[:10]
    return f"{stem}-{digest}"


@dataclass
class Listing:
    sources: list[Source]
    """The inputs, sorted by relative path."""
    ignored: dict[str, int]
    """Files of a folder or prefix left out for their extension: count per extension."""


def list_sources(input_uri: str, storage: Storage, extensions: list[str]) -> Listing:
    """All inputs, sorted by relative path so every run sees them in the same order. Each is named
    by its path relative to the input root (never its bare file name: camera folders all hold a
    0001.mp4), however the root is spelled."""
    if input_uri.lower().endswith(MANIFEST_SUFFIXES):
        return Listing(_from_manifest(input_uri, storage), {})
    listing = storage.list_entries(input_uri)
    if not listing and not storage.exists(input_uri):
        raise FileNotFoundError(f"{input_uri}: input folder or prefix not found or empty")
    exts = tuple(e.lower() for e in extensions)
    out = []
    ignored: Counter[str] = Counter()
    for entry in listing:
        try:
            rel = relative_to(input_uri, entry.uri)
        except ValueError:  # the input is the file itself
            rel = entry.uri.rsplit("/", 1)[-1]
        if any(part.startswith(".") for part in rel.split("/")):
            continue  # hidden files and our own temporaries
        if exts and not rel.lower().endswith(exts):
            ext = rel.rsplit("/", 1)[-1].rpartition(".")[2].lower()
            ignored["." + ext if ext != rel.rsplit("/", 1)[-1].lower() else "(none)"] += 1
            continue
        out.append(Source(uri=entry.uri, rel=rel, size=entry.size, version=entry.version))
    return Listing(_checked(sorted(out, key=lambda s: s.rel), input_uri), dict(ignored))


def _checked(sources: list[Source], where: str) -> list[Source]:
    """Refuses inputs that would share a name or a key: each one must be placed exactly once."""
    seen: dict[str, str] = {}
    for s in sources:
        for name in (s.rel, s.source_id):
            if name in seen:
                raise ValueError(f"{where}: two inputs map to {name!r}: {seen[name]} and {s.uri}")
            seen[name] = s.uri
    return sources


def _from_manifest(uri: str, storage: Storage) -> list[Source]:

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
        full = p if (is_s3(p) or p.startswith("/")) else normalize(join(base, p))
        # Rows name the same file however they spell it (`a/x.mp4`, `./a/x.mp4`).
        rel = p if is_s3(p) else posixpath.normpath(p)
        size, version = 0, ""
        if not is_s3(full) and Path(full).is_file():
            st = Path(full).stat()
            size, version = st.st_size, str(st.st_mtime_ns)
        out.append(Source(full, rel, None if cap is None else str(cap), size=size, version=version))
    return _checked(sorted(out, key=lambda s: s.rel), uri)
