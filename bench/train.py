"""Training step benchmarks on this machine, measured in one run.

    python bench/train.py [--steps 20] [--size small]

1. Loader: step time fed by the real streaming loader (latent shards on disk, reader worker) vs
   the same steps pre-materialised in memory (target <= 1.05x: the loader is never the bottleneck).
2. MFU per model size (S, B): model FLOPs per second of a training step as a fraction of the peak
   of a large fp32 matmul on the same machine and thread count, measured before and after every
   round of steps (a shared VM's speed drifts within minutes; a peak taken once, at another
   moment, made MFU read anywhere from 50% to over 100%), the median over rounds.
3. Memory: model + gradient + optimizer memory per rank for ZeRO 0/1/2/3 with 2 ranks (torchrun,
   gloo): resident memory after two steps minus before the model was built, max over ranks
   (target: ZeRO-3 <= 0.55x of ZeRO-0).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.memory import exact_heap, peak_mb, reset_peak, rss_mb, trim  # noqa: E402

# DiT widths for the benchmark: 'small' is big enough that weights and optimizer dominate memory.
SIZES = {"tiny": "tiny", "small": "S", "base": "B"}


def make_latents(out: Path, n: int, seed: int = 0) -> None:
    from tests.latents import write_latent_shards

    r = random.Random(seed)
    # 9-33 frames at 48-96 px through a 4x8x8 VAE: latents of 3-9 x 6-12 x 6-12
    shapes = [
        (4, r.choice([3, 5, 9]), r.choice([6, 8, 12]), r.choice([6, 8, 12])) for _ in range(n)
    ]
    write_latent_shards(out, shapes, per_shard=32, seed=seed)


def _config(latents: Path, out: Path, size: str, stage: int, steps: int) -> object:
    from infra.config import load
    from infra.schema import SpacetimeConfig
    from infra.schema.presets import get_preset

    return load(
        SpacetimeConfig,
        get_preset("tiny"),
        None,
        [
            f"train.data.latents={latents}",
            f"run.output_dir={out}",
            "run.name=bench",
            f"train.model.size={SIZES[size]}",
            f"train.zero_stage={stage}",
            f"train.steps={steps}",
            "train.data.token_budget=1024",
            "train.data.microbatches_per_step=2",
            f"train.checkpoint_every={10**6}",
            f"train.log_every={10**6}",
            "train.ema_decay=0.0",
            f"train.data.workers={os.environ.get('BENCH_WORKERS', '0')}",
        ],
    )


def loader_and_mfu(steps: int, size: str, loader: bool = True) -> dict[str, float]:
    """Step times fed by the real loader and by pre-materialised batches (`loader`), and MFU:
    per round of pre-materialised steps, FLOP/s against the mean of the matmul peaks measured
    just before and just after it; the median over rounds."""
    import statistics

    import torch

    from infra.storage import Storage
    from trainer.engine import init_distributed, measure_peak_tflops
    from trainer.train import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        lat = Path(tmp) / "lat"
        make_latents(lat, 512)
        cfg = _config(lat, Path(tmp), size, 2, 10**6)
        d = init_distributed()
        tr = Trainer(cfg.train, cfg.run, Storage(), d)  # type: ignore[attr-defined]
        tr.setup(None)
        stream = tr.loader.iterate(0, 0)
        for _ in range(3):
            tr.train_step(next(stream))
        real_t = pre_t = 0.0
        rounds = 4
        per = max(1, steps // rounds)
        rates, mfus, peaks = [], [], []
        peak = measure_peak_tflops(torch.device("cpu"), False, seconds=1.0)
        for _ in range(rounds):
            # Real loader (the reader fetches and decodes shards while steps run), then the next
            # steps read completely before timing: alternating, drift hits both alike.
            t0 = time.perf_counter()
            for _ in range(per if loader else 0):
                tr.train_step(next(stream))
            real_t += time.perf_counter() - t0
            batches = [next(stream) for _ in range(per)]
            flops, t0 = 0.0, time.perf_counter()
            for b in batches:
                flops += tr.train_step(b)["flops"]
            dt = time.perf_counter() - t0
            pre_t += dt
            after = measure_peak_tflops(torch.device("cpu"), False, seconds=1.0)
            rates.append(flops / dt / 1e12)
            peaks.append((peak + after) / 2)
            mfus.append(rates[-1] / peaks[-1])
            peak = after
        real, pre = real_t / (rounds * per), pre_t / (rounds * per)
        return {
            "params_m": tr.model.num_params() / 1e6,
            "step_real_s": real,
            "step_pre_s": pre,
            "ratio": real / pre,
            "tflops": statistics.median(rates),
            "peak_tflops": statistics.median(peaks),
            "peak_range": (min(peaks), max(peaks)),
            "mfu": statistics.median(mfus),
            "mfu_range": (min(mfus), max(mfus)),
            "threads": torch.get_num_threads(),
        }


def mfu_worker(size: str, steps: int) -> None:
    """One model size's MFU in a fresh process (sizes do not share a heap), printed as JSON."""
    print("MFU-JSON " + json.dumps(loader_and_mfu(steps, size, loader=False)), flush=True)


_RENDEZVOUS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def mfu_of(size: str, steps: int) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--mfu-worker", size, "--steps", str(steps)]
    # The parent's process group holds its rendezvous port: the child finds its own.
    env = {k: v for k, v in os.environ.items() if k not in _RENDEZVOUS}
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("MFU-JSON ")]
    if p.returncode or not lines:
        raise SystemExit(f"MFU run of {size} failed:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
    return json.loads(lines[-1].removeprefix("MFU-JSON "))


def memory_worker(stage: int, size: str, latents: str, out: str) -> None:
    """Runs under torchrun: prints this rank's memory as JSON."""

    from infra.storage import Storage
    from trainer.engine import init_distributed
    from trainer.train import Trainer

    exact_heap()
    cfg = _config(Path(latents), Path(out) / f"z{stage}", size, stage, 2)
    cfg.train.data.token_budget = 64  # type: ignore[attr-defined]  # activations stay negligible
    cfg.train.host_heap_retain = False  # type: ignore[attr-defined]  # exact_heap's accounting
    d = init_distributed()
    tr = Trainer(cfg.train, cfg.run, Storage(), d)  # type: ignore[attr-defined]
    before = reset_peak()
    tr.setup(None)
    tr.peak = 1.0
    stream = tr.loader.iterate(0, 0)
    for _ in range(2):
        tr.train_step(next(stream))
    trim()
    # one file per rank: two ranks printing to one pipe interleave their lines
    (Path(out) / f"mem-{stage}-{d.rank}.json").write_text(
        json.dumps({"mb": rss_mb() - before, "peak_mb": peak_mb() - before})
    )


def memory(size: str) -> dict[int, tuple[float, float]]:
    """Per ZeRO stage: (peak, resident after the steps) MB above the level before the engine was
    built, max over the 2 ranks."""
    out: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        make_latents(Path(tmp) / "lat", 64)
        for stage in (0, 1, 2, 3):
            cmd = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nproc-per-node",
                "2",
                "--master-addr",
                "127.0.0.1",
                "--master-port",
                str(29600 + stage),
                __file__,
                "--memory-worker",
                str(stage),
                "--size",
                size,
                "--latents",
                str(Path(tmp) / "lat"),
                "--out",
                tmp,
            ]
            env = dict(os.environ, OMP_NUM_THREADS="1")
            env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
            p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
            rows = [json.loads(f.read_text()) for f in Path(tmp).glob(f"mem-{stage}-*.json")]
            if p.returncode or len(rows) != 2:
                raise SystemExit(
                    f"ZeRO-{stage} memory run failed:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}"
                )
            out[stage] = (max(r["peak_mb"] for r in rows), max(r["mb"] for r in rows))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", choices=list(SIZES), default="small")
    ap.add_argument("--workers", type=int, default=0, help="reader processes per rank (0: inline)")
    ap.add_argument("--skip-memory", action="store_true", help="only the loader and MFU rows")
    ap.add_argument(
        "--mfu-sizes", default="base", help="further sizes for MFU rows (comma list, '' for none)"
    )
    ap.add_argument("--memory-worker", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--mfu-worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--latents", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ["BENCH_WORKERS"] = str(args.workers)
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
    if args.memory_worker is not None:
        memory_worker(args.memory_worker, args.size, args.latents, args.out)
        return
    if args.mfu_worker is not None:
        mfu_worker(args.mfu_worker, args.steps)
        return
    import logging

    logging.basicConfig(level=logging.WARNING)
    a = loader_and_mfu(args.steps, args.size)
    more = {z: mfu_of(z, 8) for z in filter(None, args.mfu_sizes.split(",")) if z != args.size}
    m = {} if args.skip_memory else memory(args.size)
    print(
        f"\nDiT-{SIZES[args.size]} ({a['params_m']:.1f}M params), fp32, CPU, {a['threads']} threads, token budget 1024 x 2 micro-batches\n"
    )
    print("| measure | value | target |\n|---|---|---|")
    print(
        f"| step, real loader ({args.workers} reader processes) | {a['step_real_s'] * 1000:.0f} ms | |"
    )
    print(f"| step, pre-materialised batches | {a['step_pre_s'] * 1000:.0f} ms | |")
    print(f"| loader / pre-materialised | {a['ratio']:.3f}x | <= 1.05x |")
    print(
        "\n| model | params | step s | achieved GFLOP/s | matmul peak GFLOP/s (2048^2 fp32, range) "
        "| MFU (median of 4 rounds) | MFU range | target |\n|---|---|---|---|---|---|---|---|"
    )
    for z, r in {args.size: a, **more}.items():
        lo, hi = r["peak_range"]
        print(
            f"| DiT-{SIZES[z]} | {r['params_m']:.1f}M | {r['step_pre_s']:.2f} | "
            f"{r['tflops'] * 1000:.1f} | {r['peak_tflops'] * 1000:.0f} ({lo * 1000:.0f}-{hi * 1000:.0f}) | "
            f"{100 * r['mfu']:.1f}% | {100 * r['mfu_range'][0]:.1f}-{100 * r['mfu_range'][1]:.1f}% | "
            f">= 60% ({'met' if r['mfu'] >= 0.6 else 'not met'}) |"
        )
    if not m:
        return
    print(
        "\n| ZeRO stage (2 ranks) | peak MB per rank | vs stage 0 | resident after the steps MB | vs stage 0 |"
        "\n|---|---|---|---|---|"
    )
    for stage, (peak, res) in m.items():
        print(
            f"| {stage} | {peak:.0f} | {peak / m[0][0]:.2f}x | {res:.0f} | {res / m[0][1]:.2f}x |"
        )
    print(f"\nZeRO-3 / ZeRO-0 peak memory: {m[3][0] / m[0][0]:.2f}x (target <= 0.55x)")


if __name__ == "__main__":
    main()
