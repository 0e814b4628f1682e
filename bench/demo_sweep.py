"""Demo-quality sweeps on a GPU: several DiT variants trained at once, far past the CPU's budget,
each checkpoint scored with the demo's scorer (issue 20: where does shape get learned, if at all).

    python bench/demo_sweep.py bundle --workdir W --vae NAME --out DIR   # here: latents, VAE, texts
    python bench/demo_sweep.py run --bundle DIR --out OUT [--variants A,B] [--train-s 330]

`bundle` (on the machine that made `bench/demo_quality.py`'s workdir) gathers what a GPU machine
without the data stack needs: the demo's training latents for one VAE variant, that VAE, the demo's
24 evaluation prompts as the text encoder's states (the recaption paragraphs they are rewritten to,
as `infra.demo.evaluate` does), and the config overrides. `run` trains every variant concurrently
(the real trainer: torchrun, DeepSpeed ZeRO-2, one rank holding the demo's two micro-batches per
step, fp32 as on the CPU) until `--train-s` has passed, then samples the 24 prompts from every kept
checkpoint on the GPU and scores the decoded frames directly (the CPU evaluation scores them after
an mp4 round trip; the two agree on this scorer, see BENCHMARKS.md). Results: OUT/sweep.md (the
table) and OUT/sweep.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# One entry per variant: overrides on the demo preset (and the bundle's VAE overrides).
VARIANTS: dict[str, list[str]] = {
    "XS (demo preset)": [],
    "S (12 x 384)": ["train.model.size=S"],
    "B (12 x 768)": ["train.model.size=B"],
    # The demo preset before round 10 (2x2 latent pixels per token, 576 tokens a sample, 3x shift).
    "XS patch 1x2x2": ["train.model.patch=[1,2,2]", "train.flow.shift_base_tokens=64"],
    # x0 prediction with 8x8 latent pixels per token (36 tokens a sample), the shift kept at 3x.
    "XS x0 patch 1x8x8": [
        "train.flow.prediction=x0",
        "train.model.patch=[1,8,8]",
        "train.flow.shift_base_tokens=4",
    ],
    # 1 latent pixel per token: the object's outline spans ~5x5 tokens instead of ~3x3. A 64x64
    # clip is 2,304 tokens; the budget holds two, and three micro-batches keep ~6 clips a step.
    "XS patch 1x1x1": [
        "train.model.patch=[1,1,1]",
        "train.flow.shift_base_tokens=256",
        "train.data.token_budget=4608",
        "train.data.microbatches_per_step=3",
    ],
    "XS 4x clips per step": ["train.data.microbatches_per_step=8"],
    # Round 9's weaker shift; at the preset's 144-token samples base 256 shifts toward less noise.
    "XS shift base 256": ["train.flow.shift_base_tokens=256"],
    "S patch 1x1x1": [
        "train.model.size=S",
        "train.model.patch=[1,1,1]",
        "train.flow.shift_base_tokens=256",
        "train.data.token_budget=4608",
        "train.data.microbatches_per_step=3",
    ],
    # The production path (DeepSpeed's bf16 mode): its step lines give the trainer's own MFU.
    "B bf16": ["train.model.size=B", "train.precision=bf16"],
}
# A variant whose trainer fails is started once more on the plain PyTorch paths, so one broken
# GPU kernel costs a row's speed, not the sweep.
FALLBACK = ["train.model.fused_impl=torch", "train.model.attn_backend=sdpa"]


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def cmd_bundle(args: argparse.Namespace) -> None:
    from safetensors.torch import save_file

    sys.path.insert(0, str(ROOT / "bench"))
    import demo_quality as dq

    from infra.demo.evaluate import eval_prompts, prompt_of
    from infra.storage import Storage
    from recaption.upsample import Upsampler
    from trainer.text.encoder import TextEncoder, TextEncoderConfig

    root, out = Path(args.workdir), Path(args.out)
    dq.prepare(root, dq.config([]))
    vae_dir = dq.train_vae_variant(root, args.vae)
    latents = dq.demo_latents(root, vae_dir, args.vae)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(latents, out / "latents", ignore=shutil.ignore_patterns("_work"))
    shutil.copytree(vae_dir, out / "vae")
    cfg = dq.config(dq.VAE_VARIANTS[args.vae])
    rows = eval_prompts(24)
    prompts = [prompt_of(r) for r in rows]
    rewrite = Upsampler.from_caption_set(str(root / "captions"), Storage())
    s = cfg.sample
    conditioned = [rewrite(p, s.width, s.height, s.frames / s.fps, s.fps) for p in prompts]
    texts = TextEncoder(TextEncoderConfig()).encode(conditioned)
    save_file(
        {f"text_{i:02d}": t.contiguous() for i, t in enumerate(texts)}, out / "texts.safetensors"
    )
    meta = {"rows": rows, "prompts": prompts, "conditioned": conditioned,
            "vae_variant": args.vae, "overrides": dq.VAE_VARIANTS[args.vae]}  # fmt: skip
    (out / "bundle.json").write_text(json.dumps(meta, indent=2))
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"bundle: {len(rows)} prompts, latents and VAE in {out} ({size / 2**20:.1f} MiB)")


def _train(
    bundle: Path, work: Path, name: str, extra: list[str], fallback: bool = False
) -> subprocess.Popen[bytes]:
    # demo_quality.train_once and infra.demo.run._train_cmd do this too, but their modules import
    # the data stack (Ray, PyAV) that a GPU machine without it cannot load.
    import yaml

    from infra.config import load, to_dict
    from infra.launch.node import NodeLaunch
    from infra.procs import free_port
    from infra.schema import SpacetimeConfig
    from infra.schema.presets import get_preset

    meta = json.loads((bundle / "bundle.json").read_text())
    over = [*meta["overrides"], *extra, *VARIANTS[name], *(FALLBACK if fallback else [])]
    cfg = load(SpacetimeConfig, get_preset("demo"), None, over)
    run = work / (slug(name) + ("-fallback" if fallback else ""))
    if fallback:
        shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True, exist_ok=True)
    cfg.run.output_dir, cfg.run.name = str(run), "dit"
    (run / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    argv = ["train", "--config", str(run / "config.yaml"), "--preset", "demo",
            "--latents", str(bundle / "latents")]  # fmt: skip
    node = NodeLaunch(1, 0, 1, f"127.0.0.1:{free_port()}", slug(name))
    env = os.environ | node.env() | {"OMP_NUM_THREADS": "2"}
    log = (run / "train.log").open("wb")
    return subprocess.Popen(node.command(argv), env=env, stdout=log, stderr=subprocess.STDOUT)


def _evaluate(bundle: str, checkpoint: str, sheet: str) -> dict[str, Any]:
    """One checkpoint's 24 samples scored (a process of its own: one model on the GPU at a time)."""
    import torch
    from safetensors.torch import load_file

    from infra.demo.score import measure, score
    from infra.demo.sheet import scored_sheet
    from trainer.sample import generate
    from trainer.sample_config import SampleConfig
    from trainer.vae.pixels import to_uint8
    from trainer.vae.pretrained import VideoVAE
    from trainer.weights import load_model

    torch.set_num_threads(2)
    b = Path(bundle)
    meta = json.loads((b / "bundle.json").read_text())
    texts_file = load_file(b / "texts.safetensors")
    texts = [texts_file[f"text_{i:02d}"] for i in range(len(meta["rows"]))]
    model, train_cfg, _ = load_model(checkpoint)
    scfg = SampleConfig(frames=17, height=64, width=64, steps=20, guidance=4.0)
    t0 = time.monotonic()
    _, videos = generate(model, train_cfg, scfg, texts, VideoVAE(b / "vae"))
    frames = [to_uint8(v) for v in videos]
    rows = meta["rows"]
    measured = [measure(f) for f in frames]
    result = score(measured, rows)
    held = [i for i, r in enumerate(rows) if r["held_out"] == "True"]
    result["held_out"] = score([measured[i] for i in held], [rows[i] for i in held])
    if sheet:
        samples = [r | {"prompt": p, "measured": m}
                   for r, p, m in zip(rows, meta["prompts"], measured, strict=True)]  # fmt: skip
        scored_sheet(samples, frames, Path(sheet))
    result["sample_s"] = round(time.monotonic() - t0, 1)
    return result


def _tail(log: Path, n: int = 3000) -> str:
    return log.read_text(errors="replace")[-n:] if log.exists() else "(no log)"


def _milestone(step: int, every: int) -> bool:
    k = step // every
    return step % every == 0 and k > 0 and k & (k - 1) == 0


def _step_rate(log: Path) -> str:
    """The trainer's last step line's throughput fields, for the table."""
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if "metrics: step " in ln]
    return lines[-1].split("metrics: ", 1)[1][:140] if lines else "-"


def cmd_run(args: argparse.Namespace) -> None:
    bundle, out = Path(args.bundle).resolve(), Path(args.out)
    work = Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    names = args.variants.split(",") if args.variants else list(VARIANTS)
    extra = [f"train.steps={args.max_steps}", f"train.checkpoint_every={args.every}",
             "train.keep_checkpoints=1000", f"train.precision={args.precision}",
        "train.log_every=5"]  # fmt: skip
    t0 = time.monotonic()
    procs = {n: _train(bundle, work, n, extra) for n in names}
    print(f"training {len(procs)} variants for up to {args.train_s:.0f} s", flush=True)
    fell_back: set[str] = set()
    while time.monotonic() - t0 < args.train_s and any(p.poll() is None for p in procs.values()):
        time.sleep(5)
        for n, p in procs.items():
            if p.poll() not in (None, 0) and n not in fell_back:
                print(f"{n}: trainer exited {p.returncode}; again with {FALLBACK}", flush=True)
                print(_tail(work / slug(n) / "train.log"), flush=True)
                fell_back.add(n)
                procs[n] = _train(bundle, work, n, extra, fallback=True)
    from infra.procs import kill_tree

    for p in procs.values():
        if p.poll() is None:
            kill_tree(p.pid)
        p.wait()
    train_s = time.monotonic() - t0
    print(f"trained {train_s:.0f} s; scoring checkpoints", flush=True)
    todo = []  # (priority, variant, step, checkpoint, sheet): the last and first points first
    for n in names:
        run = work / (slug(n) + ("-fallback" if n in fell_back else ""))
        (out / "logs").mkdir(exist_ok=True)
        if (run / "train.log").exists():
            shutil.copy(run / "train.log", out / "logs" / f"{slug(n)}.log")
        ckpts = sorted((run / "dit" / "checkpoints").glob("step-*"))
        ckpts = [c for c in ckpts if c.name.split("-")[1].isdigit()]  # not a .partial
        for i, c in enumerate(ckpts):
            step, last = int(c.name.split("-")[1]), i == len(ckpts) - 1
            # Steps 500, 1000, 2000, 4000, ... and the last: a curve in a few scored points.
            if last or _milestone(step, args.every):
                sheet = str(out / "sheets" / f"{slug(n)}-{step}.png") if last else ""
                todo.append((0 if last else 1 if i == 0 else 2, n, step, str(c), sheet))
    (out / "sheets").mkdir(exist_ok=True)
    # spawn: each scorer opens CUDA itself (a forked child of a CUDA parent cannot).
    pool = ProcessPoolExecutor(args.eval_procs, mp_context=mp.get_context("spawn"))
    jobs = {(n, step): pool.submit(_evaluate, str(bundle), c, sheet)
            for _, n, step, c, sheet in sorted(todo)}  # fmt: skip
    results: dict[str, Any] = {}
    for (n, step), fut in jobs.items():
        try:
            ev = fut.result(timeout=max(1.0, args.deadline_s - (time.monotonic() - t0)))
        except Exception as e:  # a failed or late eval is one row, not the sweep
            ev = {"error": f"{type(e).__name__}: {e}"}
        results.setdefault(n, {})[step] = ev
        _write(out, results, names, work, train_s, fell_back)
    pool.shutdown(wait=False, cancel_futures=True)
    for child in mp.active_children():  # scorers still running past the deadline
        kill_tree(child.pid)
    _write(out, results, names, work, train_s, fell_back)
    print((out / "sweep.md").read_text())


def _write(
    out: Path,
    results: dict[str, Any],
    names: list[str],
    work: Path,
    train_s: float,
    fell_back: set[str],
) -> None:
    lines = [
        f"Trained concurrently for {train_s:.0f} s; each kept checkpoint sampled (24 prompts, "
        "20 steps, guidance 4) and scored.",
        "",
        "| DiT variant | step | colour | direction | shape | held-out colour | held-out direction "
        "| held-out shape | travel | intact |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n in names:
        for step, ev in sorted(results.get(n, {}).items()):
            if "error" in ev:
                lines.append(f"| {n} | {step} | {ev['error'][:120]} | | | | | | | |")
                continue
            h = ev["held_out"]
            lines.append(
                f"| {n} | {step} | {ev['colour']:.0%} | {ev['direction']:.0%} | {ev['shape']:.0%} "
                f"| {h['colour']:.0%} | {h['direction']:.0%} | {h['shape']:.0%} "
                f"| {ev['travel']:.2f} | {ev['intact']:.0%} |"
            )
    lines += ["", "Last step line per variant:"]
    for n in names:
        log = work / (slug(n) + ("-fallback" if n in fell_back else "")) / "train.log"
        again = f" (again with {FALLBACK})" if n in fell_back else ""
        lines.append(f"- {n}{again}: {_step_rate(log) if log.exists() else '-'}")
    (out / "sweep.md").write_text("\n".join(lines) + "\n")
    slim = {n: {s: {k: v for k, v in ev.items() if k != "samples"} for s, ev in r.items()}
            for n, r in results.items()}  # fmt: skip
    (out / "sweep.json").write_text(json.dumps(slim, indent=1, default=str))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("bundle", "run"))
    p.add_argument("--workdir", default="/tmp/demo-quality", help="bundle: demo_quality's workdir")
    p.add_argument("--vae", default="time stride 2 + learned resample + 1200 steps")
    p.add_argument("--out", required=True)
    p.add_argument("--bundle", default="")
    p.add_argument("--work", default="/tmp/demo-sweep", help="run: the training runs' folder")
    p.add_argument("--variants", default="", help="comma-separated names (default: all)")
    p.add_argument("--train-s", type=float, default=330.0, help="run: training wall budget")
    p.add_argument("--deadline-s", type=float, default=480.0, help="run: scoring ends by then")
    p.add_argument("--max-steps", type=int, default=100_000)
    p.add_argument("--every", type=int, default=500)
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "auto"))
    p.add_argument("--eval-procs", type=int, default=6)
    args = p.parse_args()
    {"bundle": cmd_bundle, "run": cmd_run}[args.what](args)


if __name__ == "__main__":
    main()
