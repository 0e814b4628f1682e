"""The `stats` captioner: a factual caption from measured content, needing no model weights.

Measures, on the sampled frames: colourfulness (black-and-white or the dominant named hues),
brightness, how much the picture changes per second, and the dominant translation between frames
(phase correlation: the camera's pan/tilt, or a lone moving object on a plain background). Adds the
clip's orientation, size, duration, and whether its source video has cuts (from the manifest), and
keeps the source caption when there is one.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# Hue ranges in degrees -> colour names (red wraps around 0).
HUES = [
    (15, "red"),
    (40, "orange"),
    (70, "yellow"),
    (160, "green"),
    (195, "cyan"),
    (260, "blue"),
    (290, "purple"),
    (340, "magenta"),
    (360, "red"),
]


def hsv(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(..., 3) uint8 RGB -> hue degrees, saturation, value in [0, 1]."""
    rgb = frames.astype(np.float32) / 255.0
    mx, mn = rgb.max(-1), rgb.min(-1)
    delta = mx - mn
    s = np.where(mx > 0, delta / np.maximum(mx, 1e-6), 0.0)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    d = np.maximum(delta, 1e-6)
    h = np.where(mx == r, ((g - b) / d) % 6, np.where(mx == g, (b - r) / d + 2, (r - g) / d + 4))
    return h * 60.0, s, mx


def hue_name(deg: float) -> str:
    return next(name for top, name in HUES if deg < top)


def colour_facts(frames: np.ndarray) -> dict[str, Any]:
    h, s, v = hsv(frames)
    colourful = (s > 0.25) & (v > 0.2)
    share = float(colourful.mean())
    names: dict[str, float] = {}
    if colourful.any():
        for deg in h[colourful].ravel()[:: max(1, colourful.sum() // 20000)]:
            n = hue_name(float(deg))
            names[n] = names.get(n, 0) + 1
    total = sum(names.values()) or 1
    dominant = [n for n, c in sorted(names.items(), key=lambda x: -x[1]) if c / total >= 0.15][:3]
    return {
        "saturation": round(float(s.mean()), 4),
        "black_and_white": bool(s.mean() < 0.06 and share < 0.02),
        "colourful_share": round(share, 4),
        "dominant_colours": dominant,
        "brightness": round(float(v.mean()), 4),
    }


def _gray(frames: np.ndarray, side: int = 128) -> np.ndarray:
    g = frames.astype(np.float32).mean(-1)
    step = max(1, max(g.shape[1:]) // side)
    return g[:, ::step, ::step]


def phase_shift(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """(dy, dx, peak strength) of the translation taking a to b (phase correlation)."""
    win = np.outer(np.hanning(a.shape[0]), np.hanning(a.shape[1]))
    fa, fb = np.fft.fft2((a - a.mean()) * win), np.fft.fft2((b - b.mean()) * win)
    r = fb * np.conj(fa)
    corr = np.fft.ifft2(r / np.maximum(np.abs(r), 1e-9)).real
    y, x = np.unravel_index(int(np.argmax(corr)), corr.shape)
    dy = y - a.shape[0] if y > a.shape[0] // 2 else y
    dx = x - a.shape[1] if x > a.shape[1] // 2 else x
    return float(dy), float(dx), float(corr.max())


def motion_facts(frames: np.ndarray, times: list[float]) -> dict[str, Any]:
    g = _gray(frames)
    if len(g) < 2:
        return {"change_per_s": 0.0, "shift": None}
    dts = np.maximum(np.diff(times), 1e-3)
    change = float(
        np.mean([np.abs(g[i + 1] - g[i]).mean() / 255.0 / dts[i] for i in range(len(g) - 1)])
    )
    shifts = [phase_shift(g[i], g[i + 1]) for i in range(len(g) - 1)]
    side = max(g.shape[1:])
    # Consistent translation: every pair agrees in sign on the main axis, with a clear peak.
    dy = np.array([s[0] for s in shifts]) / dts / side
    dx = np.array([s[1] for s in shifts]) / dts / side
    strong = np.mean([s[2] for s in shifts]) > 0.05
    shift = None
    for axis, vals, pos, neg in (("x", dx, "right", "left"), ("y", dy, "down", "up")):
        m = float(np.median(vals))
        consistent = strong and abs(m) > 0.02 and (np.sign(vals) == np.sign(m)).mean() >= 0.75
        if consistent and (shift is None or abs(m) > abs(shift["speed"])):
            shift = {"axis": axis, "direction": pos if m > 0 else neg, "speed": round(m, 4)}
    return {"change_per_s": round(change, 4), "shift": shift}


def describe(facts: dict[str, Any], source_caption: str = "") -> str:
    w, h = facts["width"], facts["height"]
    # Not "square": a caption's words for the frame must not be words for what is in it (every
    # 64x64 demo clip's caption said "square", whatever its object's shape).
    orientation = "portrait" if h > w * 1.05 else "landscape" if w > h * 1.05 else "1:1"
    c = facts["colour"]
    parts = []
    style = "black-and-white " if c["black_and_white"] else ""
    parts.append(
        f"A {orientation} {style}video clip of {facts['seconds']:.1f} seconds ({w}x{h}, "
        f"{facts['fps']:.0f} fps)."
    )
    if not c["black_and_white"]:
        if c["dominant_colours"]:
            cols = c["dominant_colours"]
            named = cols[0] if len(cols) == 1 else ", ".join(cols[:-1]) + " and " + cols[-1]
            tone = "vivid" if c["colourful_share"] > 0.3 else "muted"
            parts.append(f"Its colours are {tone}, mostly {named}.")
        else:
            parts.append("Its colours are muted, close to grey.")
    b = c["brightness"]
    light = "dark" if b < 0.25 else "dim" if b < 0.45 else "bright" if b > 0.7 else "evenly lit"
    parts.append(f"The scene is {light}.")
    m = facts["motion"]
    change = m["change_per_s"]
    amount = (
        "almost static"
        if change < 0.01
        else "calm, with little motion"
        if change < 0.05
        else "moving steadily"
        if change < 0.15
        else "full of fast motion"
    )
    parts.append(f"The picture is {amount}.")
    if m["shift"] is not None:
        parts.append(f"The view's content moves {m['shift']['direction']} across the frame.")
    if facts.get("source_has_cuts"):
        parts.append(f"It is shot {facts['scene'] + 1} of a source video edited with cuts.")
    text = " ".join(parts)
    if source_caption.strip():
        return f"{source_caption.strip().rstrip('.')}. {text}"
    return text


class StatsCaptioner:
    backend = "stats"
    model_id = "stats-v1"

    def caption(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """items: {"frames", "times", "info", "source_caption", "scene", "source_has_cuts"} ->
        {"text", "facts"}."""
        out = []
        for it in items:
            facts = {
                **it["info"],
                "colour": colour_facts(it["frames"]),
                "motion": motion_facts(it["frames"], it["times"]),
                "scene": it.get("scene", 0),
                "source_has_cuts": it.get("source_has_cuts", False),
            }
            out.append({"text": describe(facts, it.get("source_caption", "")), "facts": facts})
        return out
