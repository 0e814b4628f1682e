"""What makes the demo learn: ablations at a fixed budget, one change at a time (issue 20).

    python bench/demo_quality.py vae [--variants NAME,...] [--workdir DIR]
    python bench/demo_quality.py dit [--steps 450] [--variants NAME,...] [--vae NAME] [--workdir DIR]
    python bench/demo_quality.py curve [--steps 900] [--every 150] [--variants NAME,...] [--vae NAME]

`vae`: trains the demo's VAE per variant and scores its reconstructions of the 24 evaluation
videos (the prompts the demo samples, held-out combinations included, rendered as ground truth at
the sampling size) with the demo's scorer: a VAE that cannot carry a shape caps the DiT's shape.
`dit`: trains the DiT per variant for exactly `--steps` steps (2 processes, ZeRO-2, as the demo)
on one set of latents, samples the demo's 24 prompts and scores them. The generated data, shards,
captions and each VAE's latents are made once per workdir and reused.
`curve`: one run per variant with a checkpoint kept every `--every` steps, each scored: where along
the steps each attribute is learned (a single 450-step score moves by +-25 points between runs).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from demo_variants import DIT_VARIANTS, STILLS_VARIANTS, VAE_VARIANTS  # noqa: E402

from data_pipeline.job import run_shard  # noqa: E402
from infra.config import load, to_dict  # noqa: E402
from infra.demo import shapes  # noqa: E402
from infra.demo.evaluate import HELD_OUT, eval_prompts, evaluate  # noqa: E402
from infra.demo.run import _env, _train_cmd  # noqa: E402
from infra.demo.score import measure, old_shape_rule, score  # noqa: E402
from infra.provenance import Rerun, differences, flatten  # noqa: E402
from infra.schema import SpacetimeConfig  # noqa: E402
from infra.schema.presets import get_preset  # noqa: E402
from infra.storage import Storage  # noqa: E402
from recaption.job import run_recaption  # noqa: E402
from trainer.encode import run_encode  # noqa: E402
from trainer.vae.config import VAETrainConfig  # noqa: E402
from trainer.vae.pixels import to_signed, to_uint8  # noqa: E402
from trainer.vae.pretrained import VideoVAE  # noqa: E402
from trainer.vae.train import train_vae  # noqa: E402


def config(overrides: list[str]) -> SpacetimeConfig:
    return load(SpacetimeConfig, get_preset("demo"), None, overrides)


def prepare(root: Path, cfg: SpacetimeConfig) -> None:
    """Videos, clip shards and captions, once per workdir (a workdir holds one data size)."""
    manifest = root / "videos" / "manifest.jsonl"
    if (root / "captions").exists():
        made = len(manifest.read_text().splitlines())
        if made != cfg.demo.videos:
            raise SystemExit(f"{root} holds {made} videos, not {cfg.demo.videos}: use another")
        return
    manifest = shapes.generate(root / "videos", cfg.demo.videos, cfg.run.seed, set(HELD_OUT))
    run_shard(
        str(manifest), str(root / "clips"), cfg.shard, cfg.storage, rerun=Rerun(overwrite=True)
    )
    run_recaption(str(root / "clips"), str(root / "captions"), cfg.recaption, cfg.storage)


def prepare_stills(root: Path, cfg: SpacetimeConfig, vae_dir: Path, n: int) -> Path:
    """n still images of shapes (a random frame of a random shapes clip, captioned "a {colour}
    {shape}": a still shows no direction), sharded, captioned and encoded like the videos (issue
    21's images as 1-frame clips); returns their latents."""
    tag = "" if n == 2 * 192 else f"-{n}"  # round 2's 384 stills keep their paths
    latents = root / f"latents-stills{tag}" / vae_dir.parent.name
    if latents.exists():
        return latents
    from PIL import Image

    stills = root / f"stills{tag}"
    if not (stills / "manifest.jsonl").exists():
        stills.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(1)
        rows = []
        for i, clip in enumerate(shapes.sample_clips(n, 1, set(HELD_OUT))):
            frames = shapes.render(clip)
            name = f"still-{i:05d}.png"
            Image.fromarray(frames[rng.integers(len(frames))]).save(stills / name)
            rows.append({"path": name, "caption": f"a {clip.colour} {clip.shape}"})
        (stills / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_shard(
        str(stills / "manifest.jsonl"), str(root / f"clips-stills{tag}"), cfg.shard, cfg.storage,
        rerun=Rerun(overwrite=True),
    )  # fmt: skip
    run_recaption(
        str(root / f"clips-stills{tag}"), str(root / f"captions-stills{tag}"), cfg.recaption,
        cfg.storage,
    )  # fmt: skip
    run_encode(
        str(root / f"clips-stills{tag}"), str(latents), str(vae_dir), None, cfg.encode,
        cfg.storage, captions=str(root / f"captions-stills{tag}"),
    )  # fmt: skip
    return latents


def eval_videos() -> tuple[list[dict[str, str]], list[np.ndarray]]:
    rows = eval_prompts(24)
    clips = [shapes.ShapeClip(r["colour"], r["shape"], r["direction"], 64, 64, 17) for r in rows]
    return rows, [shapes.render(c) for c in clips]


def vae_scores(vae_dir: Path) -> dict[str, Any]:
    rows, videos = eval_videos()
    vae = VideoVAE(vae_dir)
    measured = []
    for v in videos:
        x = to_signed(v)[None]
        rec = vae.decode(vae.encode(x))[0].clamp(-1, 1)
        measured.append(measure(to_uint8(rec)))
    out = score(measured, rows)
    hits = sum(
        old_shape_rule(m["outline"]) == r["shape"] for m, r in zip(measured, rows, strict=True)
    )
    return out | {"shape_old_rule": hits / len(rows)} | margins(measured, rows)


def margins(measured: list[dict[str, Any]], rows: list[dict[str, str]]) -> dict[str, float]:
    """How far from the scorer's lines the outlines sit: the squares' median corner fill (a
    square above 0.3; sharp 1.0) and the triangles' median half ratio (a triangle below 0.6;
    sharp 0.42). A DiT draws the outline a little softer than its VAE decodes it, so a VAE
    that just clears a line leaves it no margin."""

    def median(shape: str, key: str) -> float:
        vals = [
            m["outline"][key]
            for m, r in zip(measured, rows, strict=True)
            if r["shape"] == shape and m.get("outline")
        ]
        return float(np.median(vals)) if vals else float("nan")

    return {
        "square_corner": median("square", "corner"),
        "triangle_half": median("triangle", "half"),
    }


def settled(
    record: Path, settings: dict[str, Any], trained: bool, defaults: dict[str, Any]
) -> None:
    """Writes the settings a run dir is trained with to `record`, or, when the dir is `trained`
    already, refuses it if its record names other ones: a run is found by its variant's name,
    and what a name means changes (the "preset" variants follow the demo preset). A setting the
    record lacks counts as its default (`defaults`): it was added to the schema since, and its
    default is what the old code did."""
    text = yaml.safe_dump(settings, sort_keys=False)
    if trained and not record.exists():
        raise SystemExit(f"{record.parent}: trained, but {record.name} (its settings) is missing")
    if trained:
        then = flatten(defaults) | flatten(yaml.safe_load(record.read_text()) or {})
        diff = differences(then, flatten(settings))
        if diff:
            raise SystemExit(
                f"{record.parent}: trained with other settings than its variant names now "
                f"({'; '.join(diff[:4])}); move it away to retrain"
            )
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(text)


def train_vae_variant(root: Path, name: str) -> Path:
    out = root / "vae" / slug(name)
    cfg = config(VAE_VARIANTS[name])
    trained = (out / "vae").exists()
    settled(out / "variant.yaml", to_dict(cfg.vae_train), trained, to_dict(VAETrainConfig()))
    if not trained:
        train_vae(str(root / "clips"), str(out), cfg.vae_train, Storage())
    return out / "vae"


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def cmd_vae(args: argparse.Namespace) -> None:
    root = Path(args.workdir)
    prepare(root, config(args.data))
    print("| VAE variant | train s | colour | direction | shape | shape (rule before issue 20) "
          "| travel | intact | square corners (> 0.3) | triangle halves (< 0.6) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows, videos = eval_videos()
    measured = [measure(v) for v in videos]
    truth = score(measured, rows) | {"shape_old_rule": 1} | margins(measured, rows)
    print(_row("ground truth (no VAE)", 0.0, truth))
    for name in args.variants.split(",") if args.variants else VAE_VARIANTS:
        vae_dir = train_vae_variant(root, name)
        seconds = json.loads((vae_dir.parent / "summary.json").read_text())["seconds"]
        print(_row(name, seconds, vae_scores(vae_dir)), flush=True)


def _row(name: str, seconds: float, s: dict[str, Any]) -> str:
    return (
        f"| {name} | {seconds:.0f} | {s['colour']:.0%} | {s['direction']:.0%} | {s['shape']:.0%} "
        f"| {s['shape_old_rule']:.0%} | {s['travel']:.2f} | {s['intact']:.0%} "
        f"| {s['square_corner']:.2f} | {s['triangle_half']:.2f} |"
    )


def demo_latents(root: Path, vae_dir: Path, vae: str, short: bool = False) -> Path:
    """The demo's clips encoded by VAE variant `vae`, once per workdir: with the recaption stage's
    paragraphs, or (`short`) with their source captions ("a red circle moving left"). Encode runs
    every time: it skips the shards already encoded and refuses latents made by another VAE (a
    variant retrained under the same name) or with other settings."""
    latents = root / ("latents-short" if short else "latents") / slug(vae)
    cfg = config(VAE_VARIANTS[vae])
    run_encode(
        str(root / "clips"), str(latents), str(vae_dir), None, cfg.encode, cfg.storage,
        captions=None if short else str(root / "captions"),
    )  # fmt: skip
    return latents


def with_stills(
    root: Path, vae: str, vae_dir: Path, latents: Path, name: str, over: list[str]
) -> bool:
    """For a variant of STILLS_VARIANTS: makes its stills and appends the mixture of videos and
    stills (by sample share) to `over`; True when it did."""
    mixture = STILLS_VARIANTS.get(name)
    if mixture is None:
        return False
    share, n = mixture
    stills = prepare_stills(root, config(VAE_VARIANTS[vae]), vae_dir, n)
    over.append(
        f"train.data.sources=[{{latents: {latents}, weight: {1 - share}}}, "
        f"{{latents: {stills}, weight: {share}}}]"
    )
    return True


def train_once(run: Path, cfg: SpacetimeConfig, latents: Path, steps: int, mixture: bool) -> Path:
    """Trains the DiT of `cfg` in `run` (2 processes, as the demo) unless it already has; returns
    its checkpoints dir. A `mixture` names its latents in train.data.sources itself."""
    cfg.run.output_dir, cfg.run.name = str(run), "dit"
    cfg_file = run / "config.yaml"
    ckpt = run / "dit" / "checkpoints"
    settled(cfg_file, to_dict(cfg), (ckpt / "latest").exists(), to_dict(SpacetimeConfig()))
    if not (ckpt / "latest").exists():
        cmd = _train_cmd(cfg_file, latents, steps, 2)
        if mixture:
            i = cmd.index("--latents")
            del cmd[i : i + 2]
        with (run / "train.log").open("w") as f:
            subprocess.run(cmd, env=_env(), stdout=f, stderr=subprocess.STDOUT, check=True)
    return ckpt


def _scores(ev: dict[str, Any]) -> str:
    h = ev["held_out"]
    return (
        f"| {ev['colour']:.0%} | {ev['direction']:.0%} | {ev['shape']:.0%} | {h['colour']:.0%} "
        f"| {h['direction']:.0%} | {h['shape']:.0%} | {ev['travel']:.2f} | {ev['intact']:.0%} |"
    )


def _per_shape(ev: dict[str, Any]) -> str:
    """Right / asked per shape, e.g. "circle 7/7, square 2/8, triangle 6/9": a blob drawn for
    every prompt reads as circles, so the misses say more than the total."""
    parts = []
    for shape in sorted({s["shape"] for s in ev["samples"]}):
        asked = [s for s in ev["samples"] if s["shape"] == shape]
        right = sum(s["measured"]["shape"] == shape for s in asked)
        parts.append(f"{shape} {right}/{len(asked)}")
    return ", ".join(parts)


def cmd_dit(args: argparse.Namespace) -> None:
    root = Path(args.workdir)
    prepare(root, config(args.data))
    vae_dir = train_vae_variant(root, args.vae)
    print(f"DiT ablations: {args.steps} steps each, VAE '{args.vae}'")
    print("| DiT variant | s/step | final loss | colour | direction | shape | held-out colour "
          "| held-out direction | held-out shape | travel | intact |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.variants.split(",") if args.variants else DIT_VARIANTS:
        over = [*VAE_VARIANTS[args.vae], *DIT_VARIANTS[name]]
        short = name.startswith("short captions")
        latents = demo_latents(root, vae_dir, args.vae, short)
        mixture = with_stills(root, args.vae, vae_dir, latents, name, over)
        cfg = config(over)
        run = root / "runs" / f"{slug(args.vae)}--{slug(name)}"
        ckpt = train_once(run, cfg, latents, args.steps, mixture)
        state = json.loads((ckpt.parent / "train_summary.json").read_text())
        step_s = state["wall_s"] / max(1, state["trained_steps"])
        ev = evaluate(
            str(ckpt.parent), str(vae_dir), str(run / "samples"), 24,
            None if short else str(root / "captions"), cfg.sample,
        )  # fmt: skip
        print(f"| {name} | {step_s:.2f} | {state['final_loss']:.3f} {_scores(ev)}", flush=True)


def cmd_curve(args: argparse.Namespace) -> None:
    root = Path(args.workdir)
    prepare(root, config(args.data))
    vae_dir = train_vae_variant(root, args.vae)
    print(f"DiT learning curves: {args.steps} steps, scored every {args.every}, VAE '{args.vae}'")
    print("| DiT variant | step | colour | direction | shape | held-out colour "
          "| held-out direction | held-out shape | travel | intact | right per shape |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.variants.split(",") if args.variants else ["preset"]:
        short = name.startswith("short captions")
        over = [*VAE_VARIANTS[args.vae], *DIT_VARIANTS[name]]
        over += [f"train.checkpoint_every={args.every}", "train.keep_checkpoints=1000"]
        latents = demo_latents(root, vae_dir, args.vae, short)
        mixture = with_stills(root, args.vae, vae_dir, latents, name, over)
        cfg = config(over)
        run = root / "curves" / f"{slug(args.vae)}--{slug(name)}--{args.steps}"
        ckpt = train_once(run, cfg, latents, args.steps, mixture)
        # Short-caption variants are sampled from the prompt as given, as they were trained.
        captions = None if short else str(root / "captions")
        for c in sorted(ckpt.glob("step-*")):
            tag = c.name if args.prompts == 24 else f"{c.name}-{args.prompts}"
            ev = evaluate(
                str(c), str(vae_dir), str(run / "samples" / tag), args.prompts, captions,
                cfg.sample,
            )  # fmt: skip
            extra = ""
            if args.held_out_seeds > 1:
                held = _held_out_shapes(ev, c, vae_dir, run / "samples", tag, args, cfg, captions)
                extra = f" {held} |"
            print(
                f"| {name} | {int(c.name.split('-')[1])} {_scores(ev)} {_per_shape(ev)} |{extra}",
                flush=True,
            )


def _held_out_shapes(
    ev: dict[str, Any],
    ckpt: Path,
    vae_dir: Path,
    out: Path,
    tag: str,
    args: Any,
    cfg: Any,
    captions: str | None,
) -> str:
    """Held-out shapes right over `args.held_out_seeds` sampling seeds ("17/18"): the 6 held-out
    combinations drawn once are a coarse measure (a miss is 17 points); each further seed
    samples them again from other noise, each prompt rewritten with the caption set `captions`
    (None: as given), as in the first draw."""
    held = [s for s in ev["samples"] if s["held_out"] == "True"]
    for seed in range(1, args.held_out_seeds):
        again = dataclasses.replace(cfg.sample, seed=seed)
        more = evaluate(
            str(ckpt), str(vae_dir), str(out / f"{tag}-held-out-seed-{seed}"), len(HELD_OUT),
            captions, again,
        )  # fmt: skip
        held += more["samples"]
    return f"{sum(s['measured']['shape'] == s['shape'] for s in held)}/{len(held)}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("vae", "dit", "curve"))
    p.add_argument("--workdir", default="/tmp/demo-quality")
    p.add_argument(
        "--variants", default="", help="comma-separated names (default: all; curve: the preset)"
    )
    p.add_argument("--steps", type=int, default=0, help="dit: 450, curve: 900")
    p.add_argument("--every", type=int, default=150, help="curve: score every N steps")
    p.add_argument("--vae", default="preset", help="the VAE variant the DiT trains on")
    p.add_argument(
        "--prompts", type=int, default=24,
        help="curve: prompts scored per checkpoint (72: every combination once; a score of 24 "
        "moves by ~9 points between seeds, of 72 by ~5)",
    )  # fmt: skip
    p.add_argument(
        "--held-out-seeds", type=int, default=1,
        help="curve: sample the held-out combinations with this many seeds (a last column)",
    )  # fmt: skip
    p.add_argument(
        "--videos", type=int, default=0,
        help="shapes videos the workdir's data holds (default: the preset's); one size a workdir",
    )  # fmt: skip
    args = p.parse_args()
    args.data = [f"demo.videos={args.videos}"] if args.videos else []
    args.steps = args.steps or (900 if args.what == "curve" else 450)
    torch.set_num_threads(2)
    {"vae": cmd_vae, "dit": cmd_dit, "curve": cmd_curve}[args.what](args)


if __name__ == "__main__":
    main()
