"""Clips of `spacetime shard` output to decoded frames (the shards themselves: infra.shards)."""

from __future__ import annotations

import io
import json
from typing import Any

import av
import numpy as np


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
