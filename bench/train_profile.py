"""Where a CPU training step's time goes, by operator, and the MFU per model size (issue 24).

    python bench/train_profile.py [--sizes S,B] [--steps 6] [--token-budget 1024]

Builds the trainer as bench/train.py does (ZeRO-2 on one process, fp32, 2 threads, synthetic
latents), warms up, then runs `--steps` steps under torch.profiler. Operators are grouped by what
they do (matmuls, attention, normalisation and modulation, elementwise, optimizer, copies and
layout, the rest) by self CPU time; the matmuls' own FLOP rate against the measured peak shows how
much of the lost MFU is outside the matmuls.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.train import _config, make_latents  # noqa: E402

GROUPS = [
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul")),
    ("attention", ("scaled_dot_product", "flash", "attention", "aten::_softmax", "softmax")),
    ("norm + modulation", ("layer_norm", "rms_norm", "aten::native_layer_norm")),
    ("optimizer", ("adam", "_foreach", "Optimizer")),
    ("copies + layout", ("copy_", "aten::cat", "aten::contiguous", "aten::clone", "index", "to")),
    ("elementwise", ("aten::mul", "aten::add", "aten::sub", "aten::div", "gelu", "silu", "aten::neg", "aten::sin", "aten::cos", "aten::pow", "aten::rsqrt", "aten::exp", "aten::sum", "aten::mean")),
]  # fmt: skip


def group_of(name: str) -> str:
    low = name.lower()
    for group, keys in GROUPS:
        if any(k.lower() in low for k in keys):
            return group
    return "other"


def profile(size: str, steps: int, token_budget: int) -> dict[str, object]:
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    from infra.storage import Storage
    from trainer.engine import init_distributed, measure_peak_tflops
    from trainer.train import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        lat = Path(tmp) / "lat"
        make_latents(lat, 512)
        cfg = _config(lat, Path(tmp), size, 2, steps + 3)
        cfg.train.data.token_budget = token_budget  # type: ignore[attr-defined]
        d = init_distributed()
        tr = Trainer(cfg.train, cfg.run, Storage(), d)  # type: ignore[attr-defined]
        tr.setup(None)
        stream = tr.loader.iterate(0, 0)
        for _ in range(3):
            tr.train_step(next(stream))
        batches = [next(stream) for _ in range(steps)]
        flops = 0.0
        t0 = time.perf_counter()
        for b in batches:  # timed without the profiler's overhead
            flops += tr.train_step(b)["flops"]
        wall = time.perf_counter() - t0
        batches = [next(stream) for _ in range(steps)]
        with tprofile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
            for b in batches:
                tr.train_step(b)
        peak = measure_peak_tflops(torch.device("cpu"), False, seconds=2.0)
        params = tr.model.num_params()
    by_group: dict[str, float] = defaultdict(float)
    mm_flops = mm_time = 0.0
    top = []
    for ev in prof.key_averages():
        g = group_of(ev.key)
        by_group[g] += ev.self_cpu_time_total / 1e6
        if g == "matmul":
            mm_flops += ev.flops or 0.0
            mm_time += ev.self_cpu_time_total / 1e6
        top.append((ev.self_cpu_time_total / 1e6, ev.key, ev.count))
    total = sum(by_group.values())
    return {
        "size": size,
        "params_m": params / 1e6,
        "step_s": wall / steps,
        "mfu": flops / wall / 1e12 / peak,
        "peak_tflops": peak,
        "groups": {g: t / total for g, t in sorted(by_group.items(), key=lambda x: -x[1])},
        "matmul_tflops": mm_flops / mm_time / 1e12 if mm_time else 0.0,
        "top": sorted(top, reverse=True)[:12],
        "profiled_s": total,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", default="small")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--token-budget", type=int, default=1024)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    import torch

    from bench.train import SIZES

    SIZES.setdefault("base", "B")
    torch.set_num_threads(2)
    if args.one:  # one size per process: DeepSpeed's process group is set up once per process
        print("RESULT " + json.dumps(profile(args.one, args.steps, args.token_budget)))
        return
    results = []
    for size in args.sizes.split(","):
        cmd = [sys.executable, __file__, "--one", size, "--steps", str(args.steps)]
        cmd += ["--token-budget", str(args.token_budget)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.split("RESULT ", 1)[1]))
    print(
        f"\nDiT training step on CPU: fp32, ZeRO-2, 1 process, {torch.get_num_threads()} threads, "
        f"token budget {args.token_budget} x 2 micro-batches, {args.steps} steps\n"
    )
    print("| model | params | step s | MFU | matmul TFLOP/s inside mm | peak TFLOP/s |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| DiT-{SIZES[r['size']]} | {r['params_m']:.1f}M | {r['step_s']:.2f} | {r['mfu']:.1%} "
            f"| {r['matmul_tflops']:.3f} | {r['peak_tflops']:.3f} |"
        )
    groups = list(results[0]["groups"])  # type: ignore[arg-type]
    print("\n| share of profiled CPU time | " + " | ".join(f"DiT-{SIZES[r['size']]}" for r in results) + " |")  # type: ignore[index]  # fmt: skip
    print("|---|" + "---|" * len(results))
    for g in groups:
        print(f"| {g} | " + " | ".join(f"{r['groups'].get(g, 0):.1%}" for r in results) + " |")  # type: ignore[union-attr]  # fmt: skip
    for r in results:
        print(f"\nTop operators by self CPU time, DiT-{SIZES[r['size']]} ({args.steps} steps):")  # type: ignore[index]
        for t, key, count in r["top"]:  # type: ignore[union-attr]
            print(f"  {t:7.3f} s  {count:6d}x  {key}")


if __name__ == "__main__":
    main()
