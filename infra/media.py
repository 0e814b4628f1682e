"""Media I/O shared by every stage: decoding clips and files to RGB frames, writing mp4s, contact
sheets. PyAV (FFmpeg) underneath; frames are (T, H, W, 3) uint8 numpy arrays throughout."""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def decode_frames(mp4: bytes, max_frames: int | None = None) -> np.ndarray:
    """(T, H, W, 3) uint8 frames of an encoded clip held in memory (a shard member)."""
    with av.open(io.BytesIO(mp4)) as c:
        frames = []
        for frame in c.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if max_frames is not None and len(frames) >= max_frames:
                break
    return np.stack(frames)


def read_frames(path: str | Path, max_frames: int | None = None) -> np.ndarray:
    """(T, H, W, 3) uint8 frames of an image or video file; ValueError naming the file when it
    cannot be read or holds no frame."""
    out = []
    try:
        with av.open(str(path)) as c:
            for f in c.decode(video=0):
                out.append(f.to_ndarray(format="rgb24"))
                if max_frames is not None and len(out) >= max_frames:
                    break
    except (av.error.FFmpegError, OSError) as e:
        raise ValueError(f"{path}: cannot read as an image or video ({e})") from None
    if not out:
        raise ValueError(f"{path}: no frames decoded")
    return np.stack(out)


def write_mp4(path: str | Path, frames: np.ndarray, fps: int = 8, crf: int = 12) -> None:
    """(T, H, W, 3) uint8 frames as an H.264 mp4 (sides must be even)."""
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=fps)
        s.height, s.width = frames.shape[1:3]
        s.pix_fmt = "yuv420p"
        s.time_base = Fraction(1, fps)
        s.options = {"crf": str(crf), "preset": "veryfast", "threads": "1"}
        for i, img in enumerate(frames):
            f = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            f.pts = i
            for p in s.encode(f):
                out.mux(p)
        for p in s.encode(None):
            out.mux(p)


def contact_sheet(videos: list[np.ndarray], columns: int = 8) -> np.ndarray:
    """One row per video, `columns` frames spread over its duration, 2 px white gaps."""
    rows = []
    width = max(v.shape[2] for v in videos)
    for v in videos:
        idx = np.linspace(0, len(v) - 1, min(columns, len(v))).round().astype(int)
        cells = [np.pad(v[i], ((0, 2), (0, 2), (0, 0)), constant_values=255) for i in idx]
        row = np.concatenate(cells, axis=1)
        pad = ((0, 0), (0, columns * (width + 2) - row.shape[1]), (0, 0))
        rows.append(np.pad(row, pad, constant_values=255))
    return np.concatenate(rows, axis=0)
