"""The shapes scorer itself: right on ground-truth videos (also after H.264 and under noise), at
chance on shuffled labels."""

from __future__ import annotations

import io
import random
from dataclasses import asdict

import av
import numpy as np

from infra.demo.score import measure, score
from infra.demo.shapes import render, sample_clips
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
    assert measure(frames) == {"colour": None, "direction": None, "shape": None}
