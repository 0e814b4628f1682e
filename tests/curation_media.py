"""Fixture videos for the curation scores, rendered at test time from a frame of a sample video:
camera moves over a still picture, burnt-in text, letterbox and pillarbox bars, blur, exposure,
and copies of one clip (re-encoded, rescaled, cropped)."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tests.media import write_video

W, H, N = 256, 144, 48


def still(videos: Path, name: str = "flower.mp4", index: int = 30) -> np.ndarray:
    """One decoded RGB frame of a sample video."""
    with av.open(str(videos / name)) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i == index:
                return f.to_ndarray(format="rgb24")
    raise ValueError(f"{name} has fewer than {index + 1} frames")


def pan(img: np.ndarray, dx: float, dy: float, w: int = W, h: int = H, n: int = N) -> list:
    """A camera moving dx, dy pixels per frame over `img` (starting near its centre)."""
    x0, y0 = (img.shape[1] - w) // 2 - int(dx * n / 2), (img.shape[0] - h) // 2 - int(dy * n / 2)
    return [
        img[int(y0 + dy * i) : int(y0 + dy * i) + h, int(x0 + dx * i) : int(x0 + dx * i) + w].copy()
        for i in range(n)
    ]


def zoom(img: np.ndarray, start: float, end: float, n: int = N) -> list:
    """A zoom about the centre: the window shrinks from `start` to `end` times the output size
    (start > end zooms in)."""
    cy, cx = img.shape[0] / 2, img.shape[1] / 2
    out = []
    for i in range(n):
        s = start + (end - start) * i / (n - 1)
        w, h = W * s, H * s
        crop = img[int(cy - h / 2) : int(cy + h / 2), int(cx - w / 2) : int(cx + w / 2)]
        out.append(cv2.resize(crop, (W, H), interpolation=cv2.INTER_AREA))
    return out


def with_text(frames: list, size: int, text: str = "SPACETIME 2026") -> list:
    """White text with a dark outline burnt into every frame, `size` px high."""
    font = ImageFont.load_default(size=size)
    out = []
    for f in frames:
        im = Image.fromarray(f)
        ImageDraw.Draw(im).text(
            (10, f.shape[0] // 2),
            text,
            fill=(255, 255, 255),
            font=font,
            stroke_width=2,
            stroke_fill=(0, 0, 0),
        )
        out.append(np.asarray(im))
    return out


def bars(frames: list, top: int = 0, left: int = 0) -> list:
    """Black bars of `top` rows above and below, `left` columns left and right."""
    h, w = frames[0].shape[:2]
    out = []
    for f in frames:
        canvas = np.zeros((h + 2 * top, w + 2 * left, 3), np.uint8)
        canvas[top : top + h, left : left + w] = f
        out.append(canvas)
    return out


def resized(frames: list, w: int, h: int) -> list:
    return [cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in frames]


def write(path: Path, frames: list, **kw) -> Path:  # type: ignore[no-untyped-def]
    return write_video(path, [np.ascontiguousarray(f) for f in frames], **kw)


CAMERA_FIXTURES = {
    "static": "static",
    "slow": "pan",
    "fast": "pan",
    "tilt": "tilt",
    "zoom_in": "zoom_in",
    "zoom_out": "zoom_out",
}
