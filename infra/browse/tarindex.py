"""Where each member's bytes sit inside a shard tar, so one clip can be served by byte range.

The index is built once per shard by reading the tar's headers in order (a streamed read of the
whole object on S3, a seek per member locally) and cached in memory and under the user's cache
directory, keyed by the shard's URI, size and modification time, so a shard rewritten in place is
indexed again. Member names that could escape a folder (absolute, `..`) are left out: nothing
under such a name is ever served.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import threading
from pathlib import Path, PurePosixPath
from typing import Any

from infra.storage import Storage
from infra.uris import is_s3

Member = tuple[int, int]
"""(offset of the data in the tar, size)."""

_lock = threading.Lock()
_memory: dict[str, dict[str, Member]] = {}


def safe_name(name: str) -> bool:
    p = PurePosixPath(name)
    return bool(name) and not p.is_absolute() and ".." not in p.parts and "\\" not in name


def _cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "spacetime" / "browse"


def _version(uri: str, storage: Storage) -> str:
    if is_s3(uri):
        return str(storage.size(uri))
    st = Path(uri).stat()
    return f"{st.st_size}-{st.st_mtime_ns}"


def member_index(uri: str, storage: Storage) -> dict[str, Member]:
    """{member name: (data offset, size)} of the tar at `uri`."""
    tag = hashlib.sha256(f"{uri}\n{_version(uri, storage)}".encode()).hexdigest()[:24]
    with _lock:
        if tag in _memory:
            return _memory[tag]
    cached = _cache_dir() / f"{tag}.json"
    try:
        index = {k: tuple(v) for k, v in json.loads(cached.read_text()).items()}
    except (OSError, ValueError):
        index = _build(uri, storage)
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(index))
        tmp.replace(cached)
    with _lock:
        _memory[tag] = index  # type: ignore[assignment]
    return index  # type: ignore[return-value]


def _build(uri: str, storage: Storage) -> dict[str, Any]:
    out: dict[str, Member] = {}
    with storage.open_read(uri) as f, tarfile.open(fileobj=f, mode="r|") as tar:
        for info in tar:
            if info.isfile() and safe_name(info.name):
                out[info.name] = (info.offset_data, info.size)
    return out
