"""Letterbox and pillarbox bars: found on frames sampled during the analysis decode, cropped away
before encoding.

A row (column) is picture if, in any sampled frame, more than 2% of its pixels are brighter than
`border_luma`. Bars are the dark rows (columns) outside the first and last picture row. They are
cropped only when they look like bars: on both opposite sides and of about the same size (a dark
sky above a lit street is one-sided and stays), and the picture left is at least half the side.
The box is found once per source, over frames across its whole length, so a dark scene cannot
shrink it.
"""

from __future__ import annotations

import av
import numpy as np

MAX_SAMPLES = 48
PICTURE_FRACTION = 0.02


class BorderFinder:
    def __init__(self, width: int, height: int, duration: float, border_luma: int):
        self.luma = border_luma
        self.every = max(0.5, duration / MAX_SAMPLES)
        self.next_t = 0.0
        self.rows = np.zeros(height, np.float32)
        self.cols = np.zeros(width, np.float32)
        self.samples = 0

    def offer(self, t: float, frame: av.VideoFrame) -> None:
        """Samples the frame shown at time `t` (seconds) if one is due."""
        if t + 1e-6 < self.next_t:
            return
        self.next_t = t + self.every
        grey = frame.to_ndarray(format="gray")
        if grey.shape != (len(self.rows), len(self.cols)):
            return  # a mid-stream size change: the box would not apply to every frame
        picture = grey > self.luma
        np.maximum(self.rows, picture.mean(axis=1), out=self.rows)
        np.maximum(self.cols, picture.mean(axis=0), out=self.cols)
        self.samples += 1

    def box(self) -> tuple[int, int, int, int] | None:
        """(x0, y0, x1, y1) of the picture in coded pixels (even), or None when there are no bars."""
        if not self.samples:
            return None
        y0, y1 = _span(self.rows)
        x0, x1 = _span(self.cols)
        if (x0, y0, x1, y1) == (0, 0, len(self.cols), len(self.rows)):
            return None
        return x0, y0, x1, y1


def _span(profile: np.ndarray) -> tuple[int, int]:
    """[start, end) of the picture along one axis, or the whole axis when its bars are not bars."""
    n = len(profile)
    idx = np.flatnonzero(profile > PICTURE_FRACTION)
    if not len(idx):
        return 0, n  # all dark: nothing to tell bars from picture
    lo, hi = int(idx[0]), int(idx[-1]) + 1
    near = max(4, 0.03 * n)
    if min(lo, n - hi) < max(2, 0.01 * n) or abs(lo - (n - hi)) > near or hi - lo < n / 2:
        return 0, n
    lo += lo % 2  # 4:2:0 chroma: even offsets and sizes
    hi -= (hi - lo) % 2
    return lo, hi
