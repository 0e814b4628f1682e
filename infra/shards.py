"""The shard contract: how clip, caption and latent shards are named, listed, read and written.

Every stage reads and writes webdataset tars through this module, so the format has one home:

    clips-NNNNNN.tar      {key}.mp4 {key}.json [{key}.txt]           (`spacetime shard`)
    captions-NNNNNN.tar   {key}.caption.json                         (`spacetime recaption`)
    latents-NNNNNN.tar    {key}.latent.safetensors {key}.text.safetensors   (`spacetime encode`)

A `spacetime curate` selection is a folder with `selection.parquet` (one row per kept clip: `key`,
`shard_uri`, and its manifest columns); every stage that reads clip shards accepts it in place of
the shard folder (`open_clips`) and reads only the selected clips.

A caption or latent shard is a sidecar of the clip shard with the same number. Shards are
published atomically (written under a temporary name, then renamed or uploaded whole), so a shard
that is listed is whole. Reading goes through webdataset's own tar iterator and key grouping; a
truncated or malformed tar raises `ShardError` naming the shard.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq

from infra.storage import Storage
from infra.uris import join, relative_to

CLIPS, CAPTIONS, LATENTS = "clips", "captions", "latents"
SELECTION = "selection.parquet"


class ShardError(ValueError):
    """A shard that cannot be read as webdataset (truncated, corrupt, badly named members)."""


def shard_name(kind: str, index: int) -> str:
    """`clips-000007.tar` for (CLIPS, 7)."""
    return f"{kind}-{index:06d}.tar"


def is_shard_name(name: str, kind: str) -> bool:
    return re.fullmatch(rf"{re.escape(kind)}-\d{{6}}\.tar", name) is not None


def sidecar(shard: str, kind: str) -> str:
    """The name of `shard`'s sidecar of `kind`: clips-000007.tar -> captions-000007.tar."""
    name = shard.rsplit("/", 1)[-1]
    number = re.fullmatch(r"[a-z]+-(\d{6})\.tar", name)
    if number is None:
        raise ShardError(f"{shard}: not a shard name (expected KIND-NNNNNN.tar)")
    return shard_name(kind, int(number.group(1)))


def list_shards(root: str, storage: Storage, kind: str = CLIPS) -> list[str]:
    """The `kind` shards directly under `root`, sorted; FileNotFoundError when there are none."""
    shards = [
        uri
        for uri in storage.list(root, suffix=".tar")
        if is_shard_name(relative_to(root, uri), kind)
    ]
    if not shards:
        raise FileNotFoundError(f"{root}: no {kind}-*.tar shards found")
    return shards


def iter_samples(shard: str, storage: Storage) -> Iterator[dict[str, Any]]:
    """Samples of one shard in order, `{"__key__": key, ext: bytes, ...}`, streamed (S3 too)."""

    # Imported here, not at the top: webdataset imports torch (1.4 s, ~150 MB), which a shard
    # job's decoding processes, importing this module only to write, would pay for nothing.
    from webdataset.tariterators import group_by_keys, tar_file_iterator

    def members(f: Any) -> Iterator[dict[str, Any]]:
        for m in tar_file_iterator(f):
            if "." not in m["fname"].rsplit("/", 1)[-1]:
                # webdataset would silently drop it; a member we cannot place is a broken shard
                raise ShardError(
                    f"{shard}: member {m['fname']!r} has no extension (members are KEY.EXT)"
                )
            yield m | {"__url__": shard}

    try:
        with storage.open_read(shard) as f:
            for sample in group_by_keys(members(f)):
                sample.pop("__url__", None)
                yield sample
    except (tarfile.TarError, EOFError) as e:
        raise ShardError(f"{shard}: truncated or corrupt tar ({e})") from None
    except ValueError as e:
        if isinstance(e, ShardError):
            raise
        raise ShardError(f"{shard}: {e.args[0] if e.args else e}") from None


def write_samples(uri: str, samples: Iterable[dict[str, Any]], storage: Storage) -> int:
    """Writes samples (`{"__key__": key, ext: bytes}`) as one tar and publishes it atomically at
    `uri`, with fixed member metadata so the same samples give the same bytes. Returns the count.

    Written with the standard library's tarfile, as webdataset's TarWriter does (members
    `{key}.{ext}` in sorted order, USTAR, mode 0444, mtime 0, no owner), not through it: importing
    webdataset imports torch, and every shard job's decoding process writes its staged clips here
    (1.4 s and ~150 MB per process for nothing). Read back by webdataset's reader (iter_samples).
    """
    n = 0
    with (
        storage.atomic_writer(uri) as tmp,
        open(tmp, "wb") as f,
        tarfile.open(fileobj=f, mode="w|", format=tarfile.USTAR_FORMAT) as tar,
    ):
        for s in samples:
            key = s["__key__"]
            for ext in sorted(k for k in s if not k.startswith("_")):
                value = s[ext]
                data = value.encode("utf-8") if isinstance(value, str) else value
                if not isinstance(data, bytes | bytearray | memoryview):
                    raise ValueError(f"{key}.{ext}: a sample's values must be bytes or str")
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mode, info.mtime = len(data), 0o444, 0
                tar.addfile(info, io.BytesIO(data))
            n += 1
    return n


def read_captions(shard: str, storage: Storage) -> dict[str, dict[str, Any]]:
    """{key: caption record} of one caption shard."""
    return {s["__key__"]: json.loads(s["caption.json"]) for s in iter_samples(shard, storage)}


def caption_texts(captions: str, storage: Storage) -> dict[str, str]:
    """{key: text} of every captioned clip of a caption set (failed captions left out)."""
    out: dict[str, str] = {}
    for shard in list_shards(captions, storage, CAPTIONS):
        out |= {k: r["text"] for k, r in read_captions(shard, storage).items() if r["text"]}
    return out


def sidecar_uri(root: str, shard: str, kind: str) -> str:
    """Where `shard`'s sidecar of `kind` lives under `root`."""
    return join(root, sidecar(shard, kind))


@dataclass(frozen=True)
class ClipSet:
    """The clip shards a stage reads, and which of their clips (None: all of them)."""

    shards: list[str]
    selected: dict[str, frozenset[str]] | None = None
    """Shard URI -> the keys selected in it."""

    def keys(self, shard: str) -> frozenset[str] | None:
        return None if self.selected is None else self.selected.get(shard, frozenset())

    @property
    def fingerprint(self) -> str:
        """'' for whole shards, else a digest of the selected keys: recorded in a job's settings,
        so a rerun over another selection is not mistaken for the same job."""
        if self.selected is None:
            return ""
        h = hashlib.sha256()
        for shard in sorted(self.selected):
            for key in sorted(self.selected[shard]):
                h.update(f"{shard}\t{key}\n".encode())
        return h.hexdigest()[:16]


def open_clips(root: str, storage: Storage) -> ClipSet:
    """The clips of `root`: a `spacetime shard` output, or a `spacetime curate` selection."""
    uri = join(root, SELECTION)
    if not storage.exists(uri):
        return ClipSet(list_shards(root, storage, CLIPS))
    table = pq.read_table(io.BytesIO(storage.read_bytes(uri)), columns=["key", "shard_uri"])
    selected: dict[str, set[str]] = {}
    for key, shard in zip(table["key"].to_pylist(), table["shard_uri"].to_pylist(), strict=True):
        selected.setdefault(shard, set()).add(key)
    if not selected:
        raise FileNotFoundError(f"{uri}: the selection is empty")
    return ClipSet(sorted(selected), {s: frozenset(k) for s, k in selected.items()})


def selection_setting(clips: ClipSet) -> dict[str, str]:
    """What a job records about its clip selection (nothing for whole shards, so the settings of
    jobs over whole shards read as before)."""
    return {"selection": clips.fingerprint} if clips.selected is not None else {}
