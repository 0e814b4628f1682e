"""Scoring a text-to-video model on `shapes` prompts by measuring what it generates.

K prompts (colour x shape x direction, always including the combinations held out of training)
are sampled with `spacetime sample`'s code, written as mp4s, decoded back and measured with
infra.demo.score. Reports accuracy per attribute beside the chance level, the object's travel and
how many samples stay intact; writes a scored contact sheet and an animated grid. The held-out
combinations can be drawn again from other noise: six samples measure held-out accuracy in steps
of 17 points, too coarse for an 80% target.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

from infra.demo.score import measure, score
from infra.demo.shapes import COLOURS, DIRECTIONS, SHAPES
from infra.demo.sheet import animated_grid, scored_sheet
from infra.media import read_frames
from infra.storage import Storage
from recaption.upsample import Upsampler
from trainer.sample import run_sample, slug
from trainer.sample_config import SampleConfig

log = logging.getLogger(__name__)

# Combinations never shown in the demo's training videos: one per colour, every shape and direction.
HELD_OUT: frozenset[tuple[str, str, str]] = frozenset(
    {
        ("red", "circle", "left"),
        ("green", "square", "up"),
        ("blue", "triangle", "right"),
        ("yellow", "circle", "down"),
        ("cyan", "square", "left"),
        ("magenta", "triangle", "up"),
    }
)


def eval_prompts(k: int, seed: int = 0) -> list[dict[str, str]]:
    """The held-out combinations first, then seen ones drawn without repetition."""
    rows = [{"colour": c, "shape": s, "direction": d} for c, s, d in sorted(HELD_OUT)]
    seen = [
        (c, s, d) for c in COLOURS for s in SHAPES for d in DIRECTIONS if (c, s, d) not in HELD_OUT
    ]
    random.Random(seed).shuffle(seen)
    rows += [{"colour": c, "shape": s, "direction": d} for c, s, d in seen]
    return [
        r | {"held_out": str((r["colour"], r["shape"], r["direction"]) in HELD_OUT)}
        for r in rows[:k]
    ]


def prompt_of(r: dict[str, str]) -> str:
    return f"a {r['colour']} {r['shape']} moving {r['direction']}"


def evaluate(
    checkpoint: str,
    vae: str,
    output: str,
    k: int = 24,
    captions: str | None = None,
    sample_cfg: Any = None,
    held_out_draws: int = 1,
) -> dict[str, Any]:
    """Scores `checkpoint` on k prompts; `held_out` scores the held-out combinations over
    `held_out_draws` samples each (the later draws follow the k prompts: each sample's noise seed
    is the sample config's seed plus its index, so a repeated prompt is drawn from other noise)."""
    cfg = sample_cfg or SampleConfig(frames=17, height=64, width=64, steps=20, guidance=4.0)
    first = eval_prompts(k)
    held_first = [r for r in first if r["held_out"] == "True"]
    again = [r | {"draw": str(d)} for d in range(2, held_out_draws + 1) for r in held_first]
    rows = first + again
    prompts = [prompt_of(r) for r in rows]
    out = Path(output)
    rewrite = Upsampler.from_caption_set(captions, Storage()) if captions else None
    run_sample(checkpoint, vae, prompts, str(out), cfg, rewrite=rewrite)
    videos = [read_frames(out / f"{i:02d}-{slug(p)}.mp4") for i, p in enumerate(prompts)]
    measured = [measure(v) for v in videos]
    result = score(measured[:k], first)
    held = [i for i, r in enumerate(rows) if r["held_out"] == "True"]
    result["held_out"] = score([measured[i] for i in held], [rows[i] for i in held])
    result["held_out"]["draws"] = held_out_draws
    result["samples"] = [
        r | {"prompt": p, "measured": m} for r, p, m in zip(rows, prompts, measured, strict=True)
    ]
    (out / "eval.json").write_text(json.dumps(result, indent=2))
    # Replaces run_sample's unlabelled sheet: the same frames, each row with its prompt and verdicts.
    scored_sheet(result["samples"], videos, out / "contact_sheet.png")
    animated_grid(videos, out / "samples.gif", cfg.fps)
    log.info(
        "shapes eval (%d prompts; %d held-out samples): colour %.0f%% (chance %.0f%%), direction "
        "%.0f%% (chance %.0f%%), shape %.0f%% (chance %.0f%%); held-out colour %.0f%%, direction "
        "%.0f%%, shape %.0f%%; travel %.2f of the frame (data 0.61), intact %.0f%%",
        k,
        len(held),
        100 * result["colour"],
        100 * result["colour_chance"],
        100 * result["direction"],
        100 * result["direction_chance"],
        100 * result["shape"],
        100 * result["shape_chance"],
        100 * result["held_out"]["colour"],
        100 * result["held_out"]["direction"],
        100 * result["held_out"]["shape"],
        result["travel"],
        100 * result["intact"],
    )
    return result
