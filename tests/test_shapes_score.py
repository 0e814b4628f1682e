"""The shapes scorer itself: right on ground-truth videos (also after H.264 and under noise), at
chance on shuffled labels."""

from __future__ import annotations

import io
import json
import random
from dataclasses import asdict

import av
import numpy as np

from infra.demo.score import measure, score
from infra.demo.shapes import BACKGROUND, COLOURS, DIRECTIONS, render, sample_clips
from infra.media import write_mp4


def _decode(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def test_scorer_is_right_on_ground_truth(tmp_path) -> None:  # type: ignore[no-untyped-def]
    clips = sample_clips(120, seed=3)
    rng = np.random.default_rng(0)
    measured, expected = [], []
    for i, clip in enumerate(clips):
        frames = render(clip)
        if i % 3 == 1:  # through the real codec
            write_mp4(tmp_path / "c.mp4", frames)
            frames = _decode((tmp_path / "c.mp4").read_bytes())
        elif i % 3 == 2:  # and under noise (sigma 0.15 of the range, as a sampler's residue)
            noise = rng.normal(0, 0.15 * 255, frames.shape)
            frames = np.clip(frames + noise, 0, 255).astype(np.uint8)
        measured.append(measure(frames))
        expected.append(asdict(clip))
    s = score(measured, expected)
    assert s["colour"] >= 0.98 and s["direction"] >= 0.98 and s["shape"] >= 0.98, s
    assert s["intact"] >= 0.98, [m for m in measured if not m["intact"]][:3]
    json.dumps(measured)  # eval.json holds them: plain Python types only
    assert 0.55 <= s["travel"] <= 0.75, s  # the object crosses most of the frame


def test_scorer_is_at_chance_on_shuffled_labels() -> None:
    clips = sample_clips(240, seed=4)
    measured = [measure(render(c)) for c in clips]
    expected = [asdict(c) for c in clips]
    random.Random(0).shuffle(expected)
    s = score(measured, expected)
    for attr in ("colour", "direction", "shape"):
        assert abs(s[attr] - s[f"{attr}_chance"]) < 0.12, (attr, s)


def test_blank_video_measures_nothing() -> None:
    frames = np.full((9, 48, 64, 3), 128, np.uint8)
    assert all(v is None for v in measure(frames).values())
    assert (
        score([measure(frames)], [{"colour": "red", "shape": "circle", "direction": "up"}])[
            "intact"
        ]
        == 0
    )


def _background_mask(frames: np.ndarray) -> np.ndarray:
    return np.any(frames != np.array(BACKGROUND, np.uint8), axis=-1)


def test_doctored_videos_split_change_colour_and_travel_less() -> None:
    """Each doctoring is caught on every clip, and only the doctored property moves."""
    clips = [c for c in sample_clips(40, seed=5) if c.frames >= 13][:20]
    for clip in clips:
        frames = render(clip)
        t, h, w, _ = frames.shape
        obj = _background_mask(frames)
        # Split: from a third of the way in, half the object (cut across its motion) moves
        # 3 px clear of the other half, away from the motion axis.
        split = frames.copy()
        dx, _ = DIRECTIONS[clip.direction]
        for i in range(t // 3, t):
            ys, xs = np.nonzero(obj[i])
            if dx:  # moving sideways: the lower half drops down
                half = obj[i] & (np.arange(h)[:, None] >= (ys.min() + ys.max() + 1) // 2)
                moved = np.roll(half, (ys.max() - ys.min() + 1) // 2 + 3, 0)
            else:  # moving up or down: the right half moves right
                half = obj[i] & (np.arange(w)[None, :] >= (xs.min() + xs.max() + 1) // 2)
                moved = np.roll(half, (xs.max() - xs.min() + 1) // 2 + 3, 1)
            colour = split[i][half][0].copy()
            split[i][half] = BACKGROUND
            split[i][moved] = colour
        m = measure(split)
        assert m["split"] and not m["colour_change"] and not m["intact"], (clip, m)
        # Colour change: from half-way, the object is painted in another palette colour.
        other = next(c for c in COLOURS if c != clip.colour)
        recoloured = frames.copy()
        recoloured[t // 2 :][obj[t // 2 :]] = COLOURS[other]
        m = measure(recoloured)
        assert m["colour_change"] and not m["split"] and not m["intact"], (clip, m)
        # Half the motion: the clip stops half-way (every frame from then on repeats).
        half = frames.copy()
        half[t // 2 :] = frames[t // 2]
        full, slow = measure(frames)["travel"], measure(half)["travel"]
        assert slow < 0.75 * full and measure(half)["intact"], (clip, full, slow)


def _blur(frames: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of every frame (separable, edge-padded), as a decoder's softness."""
    r = int(3 * sigma)
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    f = frames.astype(np.float32)
    for axis in (1, 2):
        pad = [(0, 0)] * 4
        pad[axis] = (r, r)
        p = np.pad(f, pad, mode="edge")
        n = f.shape[axis]
        f = sum(w * np.take(p, np.arange(i, i + n), axis=axis) for i, w in enumerate(k))
    return np.clip(f, 0, 255).round().astype(np.uint8)


def test_shape_survives_mild_blur_and_not_a_smear() -> None:
    """A 1-1.5 px blur leaves every shape itself (to the eye and to the scorer); a 4 px blur
    that melts every outline into a blob must not keep scoring as the right shape."""
    clips = [c for c in sample_clips(60, seed=6) if min(c.width, c.height) >= 64][:30]
    expected = [asdict(c) for c in clips]
    for sigma in (1.0, 1.5):
        s = score([measure(_blur(render(c), sigma)) for c in clips], expected)
        assert s["shape"] >= 0.95 and s["colour"] >= 0.95, (sigma, s)
    smeared = score([measure(_blur(render(c), 4.0)) for c in clips], expected)
    assert smeared["shape"] <= 0.6, smeared
