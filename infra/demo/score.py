"""Measuring a `shapes` video from its pixels: the colour, motion direction and shape of the moving
object. Used to score generated videos against their prompts (bench/shapes_eval.py, the demo).

Rules, fixed before any model was scored:
- the object is every pixel far from the background colour after a 3x3 box filter (the background
  is the per-channel median of the frame border); colour is the palette colour nearest to the object's median RGB;
- direction is the sign of the dominant axis of the least-squares slope of the object's centroid
  over time (image y grows downward, so "down" is +y);
- shape is read from the largest blob's bounding box (median over frames where the blob does not
  touch the frame edge): a triangle fills one half of its box (top or bottom) far less than the
  other (ratio < 0.6; ~0.35 for a sharp one), a square fills its corners (> 0.3 of the corner
  cells, after smoothing), a circle leaves them mostly empty. (Until issue 20 a triangle was
  "fills < 0.66 of its box": sharp triangles fill 0.57, and a small VAE's soft triangles,
  plainly triangles to the eye, fill 0.66-0.71 (the faint apex falls under the threshold and the
  box shrinks), so they read as circles or squares; the half-ratio keeps its margin.)
- travel is how far the object's centroid moves along its direction over the clip, as a fraction
  of the frame's extent on that axis (the fitted slope times the clip length; the shapes data
  travel ~0.6-0.7);
- the object "splits" when, in at least 2 frames and 15% of them, a second blob holds >= 30% of
  the largest blob's pixels (and >= 8 pixels); it "changes colour" when the largest blob's palette
  colour differs from the clip's in at least 2 frames and 15% of them. `intact` is neither.
(travel and intact were added in issue 20, after the first three; the first three are unchanged.)
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


def _blobs(mask: np.ndarray) -> list[np.ndarray]:
    """The 4-connected components of a 2D mask, largest first (a flood fill by hand: frames are
    small, and scipy is not a dependency for one function)."""
    h, w = mask.shape
    seen = np.zeros_like(mask)
    blobs: list[np.ndarray] = []
    for y0, x0 in zip(*np.nonzero(mask), strict=True):
        if seen[y0, x0]:
            continue
        stack, pixels = [(y0, x0)], []
        seen[y0, x0] = True
        while stack:
            y, x = stack.pop()
            pixels.append((y, x))
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        out = np.zeros_like(mask)
        ys, xs = zip(*pixels, strict=True)
        out[list(ys), list(xs)] = True
        blobs.append(out)
    return sorted(blobs, key=lambda b: -int(b.sum()))


def old_shape_rule(outline: dict[str, float] | None) -> str | None:
    """The shape rule before issue 20 (box fill < 0.66: triangle), kept to report both."""
    if outline is None:
        return None
    if outline["fill"] < 0.66:
        return "triangle"
    return "square" if outline["corner"] > 0.3 else "circle"


def _nearest_colour(rgb: np.ndarray) -> str:
    return min(COLOURS, key=lambda c: float(np.linalg.norm(rgb - np.array(COLOURS[c]))))


def _persistent(flags: list[bool]) -> bool:
    """True when an event is seen in >= 2 frames and >= 15% of them (one odd frame is noise)."""
    return bool(sum(flags) >= 2 and sum(flags) >= 0.15 * len(flags))


def measure(frames: np.ndarray) -> dict[str, Any]:
    """(T, H, W, 3) uint8 -> {"colour", "direction", "shape", "travel", "split",
    "colour_change", "intact", "outline"} (None where nothing was found)."""
    mask = object_mask(frames)
    out: dict[str, Any] = {"colour": None, "direction": None, "shape": None}
    extra: dict[str, Any] = {
        "travel": None,
        "split": None,
        "colour_change": None,
        "intact": None,
        "outline": None,  # the numbers behind `shape`: half ratio, corner fill, box fill
    }
    if mask.sum() < 4:
        return out | extra
    smoothed = smooth(frames)
    out["colour"] = _nearest_colour(np.median(smoothed[mask], axis=0))
    ts, cx, cy = [], [], []
    halves, corners, fills, splits, colours = [], [], [], [], []
    for t in range(len(frames)):
        blobs = _blobs(mask[t])
        if not blobs or blobs[0].sum() < 4:
            continue
        blob = blobs[0]
        size = int(blob.sum())
        splits.append(bool(len(blobs) > 1 and blobs[1].sum() >= max(8, 0.3 * size)))
        colours.append(_nearest_colour(np.median(smoothed[t][blob], axis=0)))
        ys, xs = np.nonzero(blob)
        ts.append(t)
        cx.append(xs.mean())
        cy.append(ys.mean())
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        box = blob[y0:y1, x0:x1]
        touches_edge = y0 == 0 or x0 == 0 or y1 == blob.shape[0] or x1 == blob.shape[1]
        if not touches_edge:  # a shape cut by the frame edge says nothing about its outline
            top, bottom = box[: len(box) // 2].mean(), box[len(box) - len(box) // 2 :].mean()
            halves.append(min(top, bottom) / max(top, bottom, 1e-6))
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
        height, width = frames.shape[1:3]
        along, extent = (abs(sx), width) if abs(sx) >= abs(sy) else (abs(sy), height)
        extra["travel"] = float(along * (len(frames) - 1) / extent)
    if halves:
        half, corner = float(np.median(halves)), float(np.median(corners))
        out["shape"] = "triangle" if half < 0.6 else "square" if corner > 0.3 else "circle"
        extra["outline"] = {"half": half, "corner": corner, "fill": float(np.median(fills))}
    if ts:
        main = max(set(colours), key=colours.count)
        extra["split"] = _persistent(splits)
        extra["colour_change"] = _persistent([c != main for c in colours])
        extra["intact"] = not (extra["split"] or extra["colour_change"])
    return out | extra


def score(measured: list[dict[str, Any]], expected: list[dict[str, str]]) -> dict[str, Any]:
    """Accuracy per attribute, with the chance level of a uniform guess; the mean travel and the
    fraction of intact samples (no split, no colour change; a blank one is not intact)."""
    out: dict[str, Any] = {"n": len(expected)}
    for attr, choices in (("colour", COLOURS), ("direction", DIRECTIONS), ("shape", SHAPES)):
        hits = sum(m[attr] == e[attr] for m, e in zip(measured, expected, strict=True))
        out[attr] = hits / max(1, len(expected))
        out[f"{attr}_chance"] = 1 / len(choices)
    n = max(1, len(measured))
    out["travel"] = sum(m.get("travel") or 0.0 for m in measured) / n
    out["intact"] = sum(bool(m.get("intact")) for m in measured) / n
    return out
