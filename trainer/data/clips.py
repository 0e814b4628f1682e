"""Reading `spacetime shard` output: clip shards (local or S3) to decoded frames."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from typing import Any

import av
import numpy as np

from infra.storage import Storage


def list_shards(src: str, storage: Storage, prefix: str = "clips-") -> list[str]:
    shards = [
        u for u in storage.list(src, suffix=".tar") if u.rsplit("/", 1)[-1].startswith(prefix)
    ]
    if not shards:
        raise FileNotFoundError(f"{src}: no {prefix}*.tar shards found")
    return shards


def iter_samples(shard: str, storage: Storage) -> Iterator[dict[str, Any]]:
    """Samples of one shard in order: {"__key__", ext: bytes, ...}, streamed (S3 too)."""
    current: dict[str, Any] = {}
    with storage.open_read(shard) as f, tarfile.open(fileobj=f, mode="r|") as tf:
        for member in tf:
            if not member.isfile():
                continue
            key, ext = member.name.split(".", 1)
            if current and current["__key__"] != key:
                yield current
                current = {}
            current["__key__"] = key
            data = tf.extractfile(member)
            current[ext] = data.read() if data is not None else b""
    if current:
        yield current


def decode_frames(mp4: bytes, max_frames: int | None = None) -> np.ndarray:
    """(T, H, W, 3) uint8 frames of a clip."""
    with av.open(io.BytesIO(mp4)) as c:
        frames = []
        for frame in c.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if max_frames is not None and len(frames) >= max_frames:
                break
    return np.stack(frames)


def clip_meta(sample: dict[str, Any]) -> dict[str, Any]:
    return json.loads(sample["json"])
