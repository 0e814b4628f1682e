"""The demo's scored contact sheet (one labelled row per prompt) and an animated grid of samples.

Each row says which prompt the model was given, whether that colour/shape/direction combination
was held out of training, and what the scorer read from the pixels, attribute by attribute, so a
reader can check the scorer's verdicts against the frames beside them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from infra.media import contact_sheet

LABEL_W = 230
SCALE = 2  # 64-px samples are too small to judge a shape's outline at 1:1
GOOD, BAD, INK, PAPER = (0, 120, 0), (200, 0, 0), (20, 20, 20), (255, 255, 255)


def _verdicts(sample: dict[str, Any]) -> list[tuple[str, bool]]:
    m = sample["measured"]
    out = []
    for attr in ("colour", "shape", "direction"):
        ok = m[attr] == sample[attr]
        out.append((f"{attr} {'ok' if ok else 'NO: ' + str(m[attr])}", ok))
    travel = m.get("travel")
    out.append((f"travel {travel:.2f}" if travel is not None else "travel -", True))
    if m.get("intact") is not None:
        what = "intact" if m["intact"] else "split" if m.get("split") else "changes colour"
        out.append((what, bool(m["intact"])))
    return out


def scored_sheet(samples: list[dict[str, Any]], videos: list[np.ndarray], path: Path) -> None:
    """One row per sample: the prompt, a held-out mark and the scorer's verdicts on the left, 8
    frames spread over the clip on the right (upscaled 2x)."""
    font = ImageFont.load_default(size=14)
    rows = []
    for sample, video in zip(samples, videos, strict=True):
        frames = contact_sheet([video]).repeat(SCALE, 0).repeat(SCALE, 1)
        label = Image.new("RGB", (LABEL_W, frames.shape[0]), PAPER)
        draw = ImageDraw.Draw(label)
        held = sample.get("held_out") in (True, "True")
        draw.text((6, 6), sample["prompt"], fill=INK, font=font)
        if held:
            again = f" (draw {sample['draw']})" if sample.get("draw") else ""
            draw.text((6, 24), f"held out of training{again}", fill=(0, 0, 160), font=font)
        y = 46
        for text, ok in _verdicts(sample):
            draw.text((6, y), text, fill=GOOD if ok else BAD, font=font)
            y += 16
        rows.append(np.concatenate([np.asarray(label), frames], axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)


def animated_grid(videos: list[np.ndarray], path: Path, fps: int, columns: int = 6) -> None:
    """All samples playing side by side (GIF: every browser and viewer plays it), 2x upscaled,
    shorter clips holding their last frame."""
    n = max(len(v) for v in videos)
    h = max(v.shape[1] for v in videos)
    w = max(v.shape[2] for v in videos)
    rows = -(-len(videos) // columns)
    grid = np.full((n, rows * (h + 2), columns * (w + 2), 3), 255, np.uint8)
    for i, v in enumerate(videos):
        r, c = divmod(i, columns)
        idx = np.minimum(np.arange(n), len(v) - 1)
        y, x = r * (h + 2), c * (w + 2)
        grid[:, y : y + v.shape[1], x : x + v.shape[2]] = v[idx]
    grid = grid.repeat(SCALE, 1).repeat(SCALE, 2)
    images = [Image.fromarray(f) for f in grid]
    images[0].save(
        path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0
    )
