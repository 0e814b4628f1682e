"""The shapes dataset is deterministic and true to its captions; the demo runs what is built."""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from infra.cli import main
from infra.demo import shapes
from infra.demo.evaluate import HELD_OUT


def test_generator_is_deterministic(tmp_path: Path) -> None:
    a = shapes.generate(tmp_path / "a", 6, seed=3)
    b = shapes.generate(tmp_path / "b", 6, seed=3)
    assert a.read_text() == b.read_text()
    for row in map(json.loads, a.read_text().splitlines()):
        assert (tmp_path / "a" / row["path"]).read_bytes() == (
            tmp_path / "b" / row["path"]
        ).read_bytes()
    held_out = {("red", "circle", "left")}
    clips = shapes.sample_clips(300, seed=0, exclude=held_out)
    assert all((c.colour, c.shape, c.direction) not in held_out for c in clips)
    assert {c.direction for c in clips} == set(shapes.DIRECTIONS) and {
        c.shape for c in clips
    } == set(shapes.SHAPES)


@pytest.mark.parametrize("seed", range(3))
def test_every_combination_not_held_out_is_drawn_evenly(seed: int) -> None:
    """The demo's 192 videos cover its 66 seen combinations 2 or 3 times each; drawn
    independently, ~4 of them had no video (BENCHMARKS.md, issue 20 round 26)."""
    clips = shapes.sample_clips(192, seed=seed, exclude=set(HELD_OUT))
    counts = Counter((c.colour, c.shape, c.direction) for c in clips)
    assert len(clips) == 192 and not set(counts) & HELD_OUT
    assert len(counts) == 6 * 3 * 4 - len(HELD_OUT) and set(counts.values()) == {2, 3}, counts
    # Not one fixed order: the seed reorders the combinations.
    assert [c.colour for c in clips] != [
        c.colour for c in shapes.sample_clips(192, seed=seed + 1, exclude=set(HELD_OUT))
    ]
    with pytest.raises(ValueError, match="every combination"):
        shapes.sample_clips(1, seed=0, exclude=set(counts) | HELD_OUT)


@pytest.mark.parametrize("seed", range(4))
def test_rendered_frames_match_caption(seed: int) -> None:
    for clip in shapes.sample_clips(12, seed=seed):
        frames = shapes.render(clip)
        assert frames.shape == (clip.frames, clip.height, clip.width, 3)
        fg = np.any(frames != np.array(shapes.BACKGROUND, np.uint8), axis=-1)
        colours = frames[fg].reshape(-1, 3)
        assert (colours == np.array(shapes.COLOURS[clip.colour])).all()
        grey = shapes.render(clip, background=(128, 128, 128))  # the background is a parameter
        assert (grey[~fg] == 128).all() and (grey[fg] == frames[fg]).all()
        ys, xs = [], []
        for m in fg:
            yy, xx = np.nonzero(m)
            ys.append(yy.mean())
            xs.append(xx.mean())
        dx, dy = xs[-1] - xs[0], ys[-1] - ys[0]
        want = shapes.DIRECTIONS[clip.direction]
        assert np.sign(round(dx)) == want[0] and np.sign(round(dy)) == want[1], clip


def test_killed_launch_shows_steps_and_eta_to_the_kill() -> None:
    from infra.demo.run import _until_kill

    line = "step 10/10000000 loss 3.4230 grad 1.283 | 2.3 samples/s | epoch 0 | eta 19999980s"
    assert _until_kill(line, 30) == (
        "step 10/30 (killed there) loss 3.4230 grad 1.283 | 2.3 samples/s | epoch 0 | eta 40s"
    )
    assert _until_kill("checkpoint step-00000020 published", 30).startswith("checkpoint")


# CI checks that every stage runs, every artefact is made, and that the model follows the
# caption's colour: the easiest attribute, learned by ~100 steps on 48 videos with a 600-step VAE
# (colour 12-16 of 24 prompts at 150 steps with 1x2x2 patches, BENCHMARKS.md "CI's colour floor";
# with the demo's 1x4x4 patches 18 of 24 at 150 steps, 17 of 24 at 100, 177 s alone; with round
# 17's 4-block DiT and object-weighted loss 22 of 24 at 100, 198 s alone on a 2-core Xeon; 17 of 24
# and 331 s with the VAE trained on the one thread an xdist worker has, tests/conftest.py; 22 of 24
# and 257 s with round 20's VAE, pixels folded 2x2 first, its 600 steps in 113 s against 224 s, on
# one core with the other busy; 17 of 24 and 193 s with a 300-step VAE and half the DiT's batch,
# 18 of 24 and 227 s with the full batch, one core each). On the near-white background (round 30)
# its VAE learns slower (300 steps: 18 dB, where the grey background's reached ~27) and the model
# read colour 4 of 24 at 300 VAE steps, 16 of 24 at 600 (one core, the other busy), with the VAE
# at twice its default rate (round 30's preset): the 600-step VAE keeps that rate here (8 channels
# without content crops at the default rate read 10 of 24, round 31). The full quality targets are
# measured at the slow machine's step count, BENCHMARKS.md issue 20.
STEPS, VAE_STEPS, PROMPTS, VIDEOS, EVERY = 100, 600, 24, 48, 25
# Round 17's optimizer, not the preset's Muon and contrastive term (round 18): they learn shape
# sooner but colour and direction later (direction 61% at 300 steps against 86-90%), and at 100
# steps read colour 12 of 24 against AdamW's 17 (one thread), too near the floor; so did round 19's
# lr 3e-3 (12 of 24, 395 s). Muon at ZeRO 0 and its resume are tested in test_train_deepspeed.py;
# round 17's optimizer ran at lr 1e-3, here on round 20's half batch (cheaper steps, same colour).
ROUND_17_DIT = (
    "train.optim.name=adamw",
    "train.zero_stage=2",
    "train.flow.contrastive=0",
    "train.optim.lr=1e-3",
    "train.data.token_budget=1024",
)
# A model at chance (1/6 per prompt) reaches 8 of 24 with probability 3.5%.
COLOUR_FLOOR = 8


@pytest.mark.slow
def test_shortened_demo_produces_every_artefact(
    tmp_path: Path, local_ray: None, caplog: pytest.LogCaptureFixture
) -> None:
    """Every stage with few steps: the real engines, a kill -9 mid-training and a resume; the
    console shows both launches' step lines as they train; the samples' colours follow their
    prompts well above chance."""
    caplog.set_level(logging.INFO)
    root = tmp_path / "demo"
    # A fixed step count, not a time budget, so the kill and resume happen on any machine speed.
    argv = ["demo", "--workdir", str(root), "--minutes", "30"]
    for kv in (
        f"demo.videos={VIDEOS}",
        f"demo.eval_prompts={PROMPTS}",
        f"demo.steps={STEPS}",
        f"vae_train.steps={VAE_STEPS}",
        "vae_train.lr=2e-3",
        f"train.checkpoint_every={EVERY}",
        "train.log_every=10",
        "train.optim.warmup_steps=30",
        "sample.steps=10",
        *ROUND_17_DIT,
    ):
        argv += ["--set", kv]
    assert main(argv) == 0
    summary = json.loads((root / "summary.json").read_text())
    st = summary["stages"]
    assert st["shard"]["clips"] == VIDEOS and st["shard"]["errors"] == 0
    assert st["recaption"]["captioned"] == VIDEOS and st["encode"]["clips"] == VIDEOS
    tr = st["train"]
    assert tr["killed_after"] == f"step-{2 * EVERY:08d}" and tr["steps"] == STEPS
    for f in (
        "samples/contact_sheet.png",
        "samples/samples.gif",
        "samples/eval.json",
        "loss.png",
        "train.log",
    ):
        assert (root / f).stat().st_size > 0, f
    # The 24 prompts, then the 6 held-out combinations drawn twice more (demo.held_out_draws).
    assert len(list((root / "samples").glob("*.mp4"))) == PROMPTS + 12
    ev = summary["eval"]
    assert ev["n"] == PROMPTS and ev["held_out"]["n"] == 18 and ev["held_out"]["draws"] == 3
    # The scores are measurements of the sampled videos: recompute them from what was measured.
    per_sample = json.loads((root / "samples" / "eval.json").read_text())["samples"]
    assert len(per_sample) == PROMPTS + 12 and all(
        set(r["measured"]) >= {"colour", "direction", "shape"} for r in per_sample
    )
    held = [r for r in per_sample if r["held_out"] == "True"]
    assert {r.get("draw") for r in held} == {None, "2", "3"}
    for attr in ("colour", "direction", "shape"):
        hits = sum(r["measured"][attr] == r[attr] for r in per_sample[:PROMPTS])
        assert ev[attr] == hits / PROMPTS, attr
        hits = sum(r["measured"][attr] == r[attr] for r in held)
        assert ev["held_out"][attr] == hits / 18, attr
    # The redraws are other samples of the same prompts, not copies.
    first = {r["prompt"]: r for r in held if "draw" not in r}
    assert any(r["measured"] != first[r["prompt"]]["measured"] for r in held if "draw" in r)
    rec = json.loads(next((root / "samples").glob("00-*.json")).read_text())
    assert rec["conditioned_on"].startswith(rec["prompt"] + ". A 1:1 video clip")  # upsampled
    assert list((root / "runs" / "demo" / "tensorboard").glob("events.*"))
    log = (root / "train.log").read_text()
    assert f"resumed from step-{2 * EVERY:08d}" in log
    # The console (the demo's own log) shows each stage's start and both launches' progress.
    console = caplog.text
    for name in ("shard", "recaption", "train-vae", "encode", "train", "sample+eval"):
        assert f"demo: {name}: " in console and f"demo: {name} done in" in console, name
    # The first launch trains open-ended until the kill: its lines count to the kill point.
    assert re.search(r"demo train: step 10/50 \(killed there\) loss .* eta \d+s", console), console[
        -2000:
    ]
    assert re.search(r"demo train \(resumed\): resumed from step-00000050", console)
    assert re.search(r"demo train \(resumed\): step \d+/\d+ loss .* eta", console)
    # The contact sheet: one labelled row per prompt (a label panel beside 8 frames), and the
    # animated grid has every frame of the 17-frame samples.
    sheet = Image.open(root / "samples" / "contact_sheet.png")
    assert sheet.size[0] > 8 * 2 * 64 and sheet.size[1] >= (PROMPTS + 12) * 2 * 64, sheet.size
    assert Image.open(root / "samples" / "samples.gif").n_frames == 17
    hits = sum(r["measured"]["colour"] == r["colour"] for r in per_sample[:PROMPTS])
    assert hits >= COLOUR_FLOOR, f"colour right in {hits} of {PROMPTS} samples (chance: 4)"
    captions = [
        s["txt"].decode()
        for s in wds.WebDataset(str(next((root / "clips").glob("clips-*.tar"))), shardshuffle=False)
    ]
    assert all(c.startswith("a ") and " moving " in c for c in captions)
