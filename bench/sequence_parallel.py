"""Sequence parallelism and the memory model, measured on this machine in one run.

    python bench/sequence_parallel.py [--tokens 4096] [--skip-matrix] [--skip-zero]

1. Memory model vs measured peak per rank (DiT-S, 2 ranks, gloo): ZeRO 0-3 x SP 1-2 x activation
   checkpointing off/on (target: every prediction within 20% of the measurement).
2. One long packed sequence (DiT-S) on SP=1 (one rank) and SP=2 (two ranks): activation memory
   per rank, step time, bytes each rank sends in the all-to-alls per step, and the longest
   sequence that fits a fixed per-rank cap (targets: SP=2 <= 0.6x the activation memory of SP=1,
   >= 1.8x the longest sequence).
3. ZeRO memory per rank on DiT-B (2 ranks), where the model states dominate, next to the analytic
   layout of trainer.memory.state_bytes (target: ZeRO-3 within 10% of its analytic share).
4. A paper projection, labelled as such: DiT-XL bf16 on H100s (80 GB, 40% MFU of 989 TFLOP/s) from
   the memory model: the longest clip per SP degree and the tokens/s per GPU.

Every measurement runs a real Trainer (DeepSpeed engine, torchrun, gloo) without saving
checkpoints; peak = the resident high-water mark during the steps minus the level before the model
was built (trainer.memory.PeakMemory), with every large allocation its own mmap (bench/memory.py)
so the count is live tensors, not a heap that only grows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.memory import exact_heap  # noqa: E402

MB = 2**20


def make_latents(out: Path, tokens: int, n: int = 8) -> None:
    """`n` clips of exactly `tokens` tokens (patch 1x2x2): one clip fills one micro-batch."""
    from tests.latents import write_latent_shards

    frames, side = (tokens // 64, 16) if tokens >= 64 else (1, 2 * int(tokens**0.5))
    write_latent_shards(out, [(4, frames, side, side)] * n, per_shard=n)


def job_config(latents: Path, out: Path, job: dict[str, Any]) -> Any:
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
            f"train.model.size={job['size']}",
            "train.model.in_channels=4",
            f"train.zero_stage={job['stage']}",
            f"train.parallel.sequence={job['sp']}",
            f"train.activation_checkpointing={str(job['ckpt']).lower()}",
            f"train.data.token_budget={job['tokens']}",
            f"train.data.microbatches_per_step={job.get('microbatches', 2)}",
            "train.data.caption_dropout=0.0",
            "train.steps=100",
            f"train.checkpoint_every={10**6}",
            f"train.log_every={10**6}",
            "train.ema_decay=0.0",
            "train.data.workers=0",
            "train.peak_tflops=1",
            "train.host_heap_retain=false",  # exact_heap's freed-block accounting, not reuse
        ],
    )


def worker(spec: str) -> None:
    """Runs under torchrun: trains `steps` steps of one job and writes this rank's numbers: the
    peak since the model was built, and for the last step the memory it needed above what was
    resident before it (activations, gradients, transients), its time and the bytes it sent."""
    from infra.storage import Storage
    from trainer.engine import init_distributed
    from trainer.memory import PeakMemory
    from trainer.model.sequence_parallel import SENT
    from trainer.train import Trainer

    job = json.loads(spec)
    exact_heap()
    cfg = job_config(Path(job["latents"]), Path(job["out"]), job)
    d = init_distributed()
    tr = Trainer(cfg.train, cfg.run, Storage(), d)
    tr.setup(None)
    stream = tr.loader.iterate(0, 0)
    for _ in range(job["steps"] - 1):
        tr.train_step(next(stream))
    peak = tr.memory.peak()
    step_mem = PeakMemory(d.device)
    step_mem.start()
    sent, t0 = SENT["bytes"], time.perf_counter()
    tr.train_step(next(stream))
    rank = {
        "peak": max(peak or 0, tr.memory.peak() or 0),
        "step_memory": step_mem.peak(),
        "step_s": time.perf_counter() - t0,
        "sent": SENT["bytes"] - sent,
        "params": tr.model.num_params(),
    }
    (Path(job["out"]) / f"rank-{d.rank}.json").write_text(json.dumps(rank))


def measure(job: dict[str, Any], nproc: int, tmp: Path) -> dict[str, Any]:
    """Runs one job on `nproc` ranks; the max over ranks of peak and step time."""
    out = Path(tempfile.mkdtemp(dir=tmp))
    spec = json.dumps({**job, "out": str(out)})
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)]
    cmd += ["--master-addr", "127.0.0.1", "--master-port", str(_port())]
    cmd += [__file__, "--worker", spec]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    rows = [json.loads(f.read_text()) for f in out.glob("rank-*.json")]
    if p.returncode or len(rows) != nproc:
        raise SystemExit(f"{job} failed:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
    return {k: max(r[k] for r in rows) for k in rows[0]}


def _port() -> int:
    from infra.procs import free_port

    return free_port()


def predicted(job: dict[str, Any], world: int, tmp: Path) -> dict[str, int]:
    """trainer.memory's prediction for a job (the dry run's numbers, in bytes)."""
    import torch

    from trainer.engine import dit_deepspeed_config
    from trainer.memory import estimate
    from trainer.model.dit import DiT

    cfg = job_config(Path(job["latents"]), tmp, job).train
    with torch.device("meta"):
        n = DiT(cfg.model).num_params()
    bucket = dit_deepspeed_config(cfg, world, n)["zero_optimization"].get("reduce_bucket_size", 0)
    # Every micro-batch here is one clip of `tokens` tokens with its caption (3-7 text tokens).
    return estimate(cfg, world, n, bucket, False, 7)


def memory_matrix(tokens: int, tmp: Path, combos: list[tuple[int, int, bool]]) -> list[dict]:
    """(ZeRO stage, SP, checkpointing) on 2 ranks, DiT-S, 2 micro-batches of one `tokens` clip per
    step: the memory model's prediction next to the measured peak per rank."""
    lat = tmp / f"lat-{tokens}"
    if not lat.exists():
        make_latents(lat, tokens)
    rows = []
    for stage, sp, ckpt in combos:
        job = {"size": "S", "stage": stage, "sp": sp, "ckpt": ckpt, "tokens": tokens}
        job |= {"latents": str(lat), "steps": 2}
        got, want = measure(job, 2, tmp), predicted(job, 2, tmp)
        rows.append({**job, "measured": got["peak"], "model": want})
    return rows


def long_sequence(tokens: int, tmp: Path) -> dict[str, Any]:
    """One clip of `tokens` (and of half as many) per micro-batch, DiT-S, ZeRO-0, checkpointing
    off, on SP=1 (one rank) and SP=2 (two ranks): the memory the step needs above the resident
    states, its time, and the bytes each rank sent."""
    out: dict[str, Any] = {}
    for length in (tokens // 2, tokens):
        lat = tmp / f"lat-{length}"
        if not lat.exists():
            make_latents(lat, length)
        for sp in (1, 2):
            job = {"size": "S", "stage": 0, "sp": sp, "ckpt": False, "tokens": length}
            job |= {"latents": str(lat), "steps": 2, "microbatches": 1}
            out[(sp, length)] = measure(job, sp, tmp)
    return out


def fits(rows: dict[str, Any], tokens: int, cap: int) -> dict[int, float]:
    """The longest sequence whose step memory fits `cap` bytes per rank, per SP degree, from the
    line through the two measured lengths (activations grow linearly with tokens)."""
    longest = {}
    for sp in (1, 2):
        a, b = rows[(sp, tokens // 2)]["step_memory"], rows[(sp, tokens)]["step_memory"]
        slope = (b - a) / (tokens - tokens // 2)
        longest[sp] = tokens + (cap - b) / slope
    return longest


def zero_memory(tmp: Path, size: str = "B") -> dict[int, dict[str, Any]]:
    """ZeRO 0-3 on 2 ranks for a model whose states dominate (64-token micro-batches)."""
    lat = tmp / "lat-64"
    if not lat.exists():
        make_latents(lat, 64)
    out = {}
    for stage in (0, 1, 2, 3):
        job = {"size": size, "stage": stage, "sp": 1, "ckpt": False, "tokens": 64}
        job |= {"latents": str(lat), "steps": 2}
        out[stage] = {"measured": measure(job, 2, tmp)["peak"], "model": predicted(job, 2, tmp)}
    return out


def projection(tmp: Path) -> list[dict[str, Any]]:
    """Paper projection (not a measurement): DiT-XL, bf16, ZeRO-3, activation checkpointing, on
    H100s (80 GB, 989 TFLOP/s dense bf16, 40% MFU), one clip per micro-batch, 128 text tokens."""
    import torch

    from trainer.memory import activation_profile, estimate
    from trainer.model.dit import DiT

    rows = []
    base = {"size": "XL", "stage": 3, "sp": 1, "ckpt": True, "tokens": 1024, "latents": str(tmp)}
    cfg = job_config(tmp, tmp, base).train
    cfg.precision = "bf16"
    with torch.device("meta"):
        model = DiT(cfg.model)
    n = model.num_params()
    prof = activation_profile(cfg, torch.bfloat16)
    for gpus in (8, 64):
        for sp in (1, 2, 4, 8):
            cfg.parallel.sequence = sp
            lo, hi = 1024, 1 << 26
            while hi - lo > 1024:  # the longest clip whose predicted bytes fit 80 GB
                cfg.data.token_budget = (lo + hi) // 2
                est = estimate(cfg, gpus, n, min(500_000_000, n // 4), True, 128, prof)
                lo, hi = (
                    (cfg.data.token_budget, hi)
                    if est["device_total"] <= 80e9
                    else (lo, cfg.data.token_budget)
                )
            flops = model.flops_per_token(lo, 128)
            rows.append(
                {
                    "gpus": gpus,
                    "sp": sp,
                    "longest_tokens": lo,
                    "tokens_per_s_per_gpu": 989e12 * 0.4 / flops,
                }
            )
    return rows


def _mb(b: float) -> str:
    return f"{b / MB:.0f}"


ALL = [(st, sp, ck) for st in (0, 1, 2, 3) for sp in (1, 2) for ck in (False, True)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--tokens", type=int, default=4096, help="the long sequence (multiple of 128)")
    ap.add_argument("--matrix-tokens", type=int, default=1024)
    ap.add_argument("--cap-gib", type=float, default=2.0, help="per-rank cap for 'longest fits'")
    ap.add_argument("--skip-matrix", action="store_true")
    ap.add_argument("--skip-zero", action="store_true")
    args = ap.parse_args()
    if args.worker:
        worker(args.worker)
        return
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        if not args.skip_matrix:
            rows = memory_matrix(args.matrix_tokens, tmp, ALL)
            print(
                f"1. Memory model vs measured peak per rank (DiT-S, fp32, 2 ranks, "
                f"{args.matrix_tokens}-token clips, 2 per step)\n"
            )
            print(
                "| ZeRO | SP | act. ckpt | predicted MB | measured MB | measured / predicted |"
                " predicted activations MB | peak in |"
            )
            print("|---|---|---|---|---|---|---|---|")
            worst = 0.0
            for r in rows:
                m, ratio = r["model"], r["measured"] / r["model"]["device_total"]
                worst = max(worst, abs(ratio - 1))
                print(
                    f"| {r['stage']} | {r['sp']} | {'on' if r['ckpt'] else 'off'} | "
                    f"{_mb(m['device_total'])} | {_mb(r['measured'])} | {ratio:.2f} | "
                    f"{_mb(m['activations'])} | {m['peak_phase']} |"
                )
            print(f"\nlargest deviation: {worst:.0%} (target <= 20%)\n")
        seq = long_sequence(args.tokens, tmp)
        cap = int(args.cap_gib * 2**30)
        longest = fits(seq, args.tokens, cap)
        one, two = seq[(1, args.tokens)], seq[(2, args.tokens)]
        print(f"2. One {args.tokens}-token clip per step, DiT-S, fp32, ZeRO-0, no checkpointing\n")
        print("| | SP=1 (1 rank) | SP=2 (2 ranks) | SP=2 / SP=1 | target |")
        print("|---|---|---|---|---|")
        print(
            f"| step memory above the resident states, MB per rank | {_mb(one['step_memory'])} | "
            f"{_mb(two['step_memory'])} | {two['step_memory'] / one['step_memory']:.2f}x | <= 0.6x |"
        )
        print(
            f"| peak since the model was built, MB per rank | {_mb(one['peak'])} | "
            f"{_mb(two['peak'])} | {two['peak'] / one['peak']:.2f}x | |"
        )
        print(
            f"| step time, s | {one['step_s']:.2f} | {two['step_s']:.2f} | "
            f"{two['step_s'] / one['step_s']:.2f}x | |"
        )
        print(f"| sent in all-to-alls per step, MB per rank | 0 | {_mb(two['sent'])} | | |")
        print(
            f"| longest clip within {args.cap_gib:g} GiB of step memory, tokens | "
            f"{longest[1]:.0f} | {longest[2]:.0f} | {longest[2] / longest[1]:.2f}x | >= 1.8x |"
        )
        efficiency = one["step_s"] / (2 * two["step_s"])
        print(f"\nSP=2 parallel efficiency on this CPU: {efficiency:.0%}\n")
        if not args.skip_zero:
            z = zero_memory(tmp)
            print("3. ZeRO memory per rank, DiT-B, fp32, 2 ranks, 64-token micro-batches\n")
            print(
                "| ZeRO | measured peak MB | vs stage 0 | predicted MB | vs stage 0 | "
                "model states predicted (params + grads + optimizer) MB |"
            )
            print("|---|---|---|---|---|---|")
            for stage, r in z.items():
                m = r["model"]
                states = m["parameters"] + m["gradients"] + m["optimizer"]
                print(
                    f"| {stage} | {_mb(r['measured'])} | {r['measured'] / z[0]['measured']:.2f}x | "
                    f"{_mb(m['device_total'])} | "
                    f"{m['device_total'] / z[0]['model']['device_total']:.2f}x | {_mb(states)} |"
                )
            ratio = z[3]["measured"] / z[0]["measured"]
            floor = z[3]["model"]["device_total"] / z[0]["model"]["device_total"]
            print(
                f"\nZeRO-3 / ZeRO-0 measured {ratio:.2f}x, predicted {floor:.2f}x "
                f"(target: within 10% of the prediction: {abs(ratio / floor - 1):.0%})\n"
            )
        print(
            "4. PROJECTION (not measured): DiT-XL, bf16, ZeRO-3, activation checkpointing, H100 "
            "80 GB at 40% MFU of 989 TFLOP/s, from the memory model\n"
        )
        print(
            "| GPUs | SP | longest clip, tokens | 720p seconds (21.6k tokens/s) | tokens/s per GPU "
            "at that length | x measured CPU SP efficiency per doubling |"
        )
        print("|---|---|---|---|---|---|")
        for r in projection(tmp):
            scaled = r["tokens_per_s_per_gpu"] * efficiency ** (r["sp"].bit_length() - 1)
            print(
                f"| {r['gpus']} | {r['sp']} | {r['longest_tokens']} | "
                f"{r['longest_tokens'] / 21600:.1f} | {r['tokens_per_s_per_gpu']:.0f} | "
                f"{scaled:.0f} |"
            )


if __name__ == "__main__":
    main()
