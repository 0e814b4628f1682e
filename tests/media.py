"""Small videos made in the tests with PyAV: good ones of many shapes and bad ones of many kinds."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def moving_frames(
    w: int, h: int, n: int, seed: int = 0, colour: tuple[int, int, int] | None = None
) -> list[np.ndarray]:
    """A textured square sliding across a plain background: motion and detail for the filters."""
    rng = np.random.default_rng(seed)
    bg = rng.integers(40, 200, size=3)
    fg = np.array(colour) if colour is not None else rng.integers(0, 256, size=3)
    side = max(4, min(w, h) // 3)
    out = []
    for i in range(n):
        img = np.empty((h, w, 3), np.uint8)
        img[:] = bg
        x = int((w - side) * i / max(1, n - 1))
        y = (h - side) // 2
        img[y : y + side, x : x + side] = fg
        img[y : y + side : 2, x : x + side : 3] = 255 - fg  # texture
        out.append(img)
    return out


def write_video(
    path: Path,
    frames: list[np.ndarray],
    fps: int = 24,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    rotation: int | None = None,
    audio: bool = False,
) -> Path:
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as out:
        s = out.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = w, h, pix_fmt
        s.time_base = Fraction(1, fps)
        if rotation is not None:
            s.set_display_rotation(rotation)
        a = None
        if audio:
            a = out.add_stream("aac", rate=44100)
            a.layout = "mono"
        for i, img in enumerate(frames):
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = i
            for p in s.encode(f):
                out.mux(p)
        for p in s.encode(None):
            out.mux(p)
        if a is not None:
            _write_tone(out, a, seconds=len(frames) / fps)
    return path


def _write_tone(
    out: av.container.OutputContainer, a: av.audio.stream.AudioStream, seconds: float
) -> None:
    rate = 44100
    t = np.arange(int(rate * seconds)) / rate
    pcm = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    for start in range(0, len(pcm), 1024):
        chunk = pcm[start : start + 1024][None, :]
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
        frame.sample_rate = rate
        frame.pts = start
        for p in a.encode(frame):
            out.mux(p)
    for p in a.encode(None):
        out.mux(p)


def write_audio_only(path: Path, seconds: float = 2.0) -> Path:
    with av.open(str(path), "w") as out:
        a = out.add_stream("aac", rate=44100)
        a.layout = "mono"
        _write_tone(out, a, seconds)
    return path
