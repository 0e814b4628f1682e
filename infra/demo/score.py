"""Measuring a `shapes` video from its pixels: the colour, motion direction and shape of the moving
object. Used to score generated videos against their prompts (bench/shapes_eval.py, the demo).

Rules, fixed before any model was scored:
- the object is every pixel far from the background grey after a 3x3 box filter (the background
  is the per-channel median of the frame border); colour is the palette colour nearest to the object's median RGB;
- direction is the sign of the dominant axis of the least-squares slope of the object's centroid
  over time (image y grows downward, so "down" is +y);
- shape is read from the largest blob's bounding box (median over frames where the blob does not
  touch the frame edge): a triangle fills about half its box (< 0.66), a square fills its
  corners (> 0.3 of the corner cells, after smoothing), a circle leaves them mostly empty.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from infra.demo.shapes import COLOURS, DIRECTIONS, SHAPES


def smooth(frames: np.ndarray) -> np.ndarray:
    """3x3 box filter per frame (float32): pixel noise of generated videos down by ~3x."""
    f = np.pad(frames.astype(np.float32), ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = frames.shape[1:3]
    return sum(f[:, dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)) / 9.0


def object_mask(frames: np.ndarray, threshold: float = 60.0) -> np.ndarray:
    """(T, H, W) bool: pixels far from the background colour (after smoothing)."""
    f = smooth(frames)
    border = np.concatenate(
        [
            f[:, 0].reshape(-1, 3),
            f[:, -1].reshape(-1, 3),
            f[:, :, 0].reshape(-1, 3),
            f[:, :, -1].reshape(-1, 3),
        ]
    )
    bg = np.median(border, axis=0)
    return np.linalg.norm(f - bg, axis=-1) > threshold


def _largest_blob(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a 2D mask (flood fill; frames are small)."""
    h, w = mask.shape
    seen = np.zeros_like(mask)
    best: list[tuple[int, int]] = []
    for y0, x0 in zip(*np.nonzero(mask), strict=True):
        if seen[y0, x0]:
            continue
        stack, blob = [(y0, x0)], []
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            blob.append((y, x))
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        if len(blob) > len(best):
            best = blob
    out = np.zeros_like(mask)
    if best:
        ys, xs = zip(*best, strict=True)
        out[list(ys), list(xs)] = True
    return out


def measure(frames: np.ndarray) -> dict[str, Any]:
    """(T, H, W, 3) uint8 -> {"colour", "direction", "shape"} (None where nothing was found)."""
    mask = object_mask(frames)
    out: dict[str, Any] = {"colour": None, "direction": None, "shape": None}
    if mask.sum() < 4:
        return out
    rgb = np.median(smooth(frames)[mask], axis=0)
    out["colour"] = min(COLOURS, key=lambda c: float(np.linalg.norm(rgb - np.array(COLOURS[c]))))
    ts, cx, cy = [], [], []
    fills, corners = [], []
    for t in range(len(frames)):
        blob = _largest_blob(mask[t])
        if blob.sum() < 4:
            continue
        ys, xs = np.nonzero(blob)
        ts.append(t)
        cx.append(xs.mean())
        cy.append(ys.mean())
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        box = blob[y0:y1, x0:x1]
        touches_edge = y0 == 0 or x0 == 0 or y1 == blob.shape[0] or x1 == blob.shape[1]
        if not touches_edge:  # a shape cut by the frame edge says nothing about its outline
            fills.append(box.mean())
            k = max(1, min(box.shape) // 5)
            corners.append(
                np.mean(
                    [
                        box[:k, :k].mean(),
                        box[:k, -k:].mean(),
                        box[-k:, :k].mean(),
                        box[-k:, -k:].mean(),
                    ]
                )
            )
    if len(ts) >= 2:
        sx = np.polyfit(ts, cx, 1)[0]
        sy = np.polyfit(ts, cy, 1)[0]
        if abs(sx) >= abs(sy):
            out["direction"] = "right" if sx > 0 else "left"
        else:
            out["direction"] = "down" if sy > 0 else "up"
    if fills:
        fill, corner = float(np.median(fills)), float(np.median(corners))
        out["shape"] = "triangle" if fill < 0.66 else "square" if corner > 0.3 else "circle"
    return out


def score(measured: list[dict[str, Any]], expected: list[dict[str, str]]) -> dict[str, Any]:
    """Accuracy per attribute, with the chance level of a uniform guess."""
    out: dict[str, Any] = {"n": len(expected)}
    for attr, choices in (("colour", COLOURS), ("direction", DIRECTIONS), ("shape", SHAPES)):
        hits = sum(m[attr] == e[attr] for m, e in zip(measured, expected, strict=True))
        out[attr] = hits / max(1, len(expected))
        out[f"{attr}_chance"] = 1 / len(choices)
    return out
