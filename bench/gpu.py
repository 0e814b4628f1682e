"""`python bench/gpu.py --out DIR`: every GPU check in one run, for the few minutes a GPU is lent.

1. the machine: GPU, torch, Triton, which attention backends can run, and a bf16 matmul peak
   (8192^3, the MFU denominator beside the vendor's 989 TFLOP/s dense bf16);
2. the GPU tests: attention backends against the float64 oracle, Triton kernels against their
   references, the packed DiT in bf16 against float64 (pytest, GPU cases included);
3. `bench/kernels.py`: attention backends and fused ops, with FlashAttention-3's headline shape;
4. DiT training steps as DeepSpeed's bf16 mode computes them (bf16 weights and inputs; fused
   AdamW on the bf16 weights stands in for DeepSpeed's fp32-master step, which this image cannot
   run: no DeepSpeed) on a realistic packed length mix, per model size, MFU against both peaks;
   one change at a time on DiT-B and XL (attention backend, fused-op implementation);
5. where an XL step's GPU time goes, by kernel (torch.profiler).

Each section's result is printed and appended to DIR/gpu_report.md as it finishes, so a run cut
short keeps what it measured; a section that fails prints its error and the next one runs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kernels.attention import Backend, why_unavailable  # noqa: E402
from trainer.model.config import SIZES, DiTConfig  # noqa: E402
from trainer.model.dit import DiT  # noqa: E402
from trainer.model.packing import pack  # noqa: E402

VENDOR_BF16_TFLOPS = 989.0  # H100/H200 SXM dense bf16, datasheet
# DiT-XL's width in 18 heads of 64 instead of 16 of 72: FlashAttention-2 pads head dim 72 to 96.
SIZES["XL-h64"] = (28, 1152, 18)

# (C, T, H, W) latents of a 16-channel, 4x8x8 VAE (Wan's): what a mixed-resolution video batch
# holds, ~32k tokens at patch (1, 2, 2). One 480p 2 s clip, one 256p 5 s clip, one 256p 2 s clip,
# five 512x512 images.
MIX = [(16, 9, 60, 104), (16, 21, 32, 56), (16, 9, 32, 56)] + [(16, 1, 64, 64)] * 5
TEXT_LENS = [77, 120, 33, 20, 64, 0, 90, 12]  # one empty caption (classifier-free dropout)
# The other end of the length mix: 128 images of 256^2 (256 tokens each), 32k tokens.
IMAGES = [(16, 1, 32, 32)] * 128
MIXES = {"video mix": (MIX, TEXT_LENS), "128 images": (IMAGES, [(7 * i) % 90 for i in range(128)])}


def report(out: Path, text: str) -> None:
    print(text, flush=True)
    with open(out / "gpu_report.md", "a") as f:
        f.write(text + "\n")


def matmul_peak(n: int = 8192, iters: int = 20) -> float:
    # Not trainer.engine.measure_peak_tflops: its 2048^3 products, timed on the host, are
    # launch-bound on an H200; 8192^3 timed with CUDA events reads the chip's rate.
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 2 * n**3 * iters / (start.elapsed_time(end) / 1e3) / 1e12


def section_machine(out: Path) -> float:
    import importlib.util

    props = torch.cuda.get_device_properties(0)
    triton = importlib.util.find_spec("triton")
    tv = __import__("triton").__version__ if triton else "absent"
    lines = [
        "## Machine",
        f"- GPU: {props.name}, {props.multi_processor_count} SMs, "
        f"{props.total_memory / 2**30:.0f} GiB; torch {torch.__version__}, CUDA {torch.version.cuda}, "
        f"Triton {tv}, Python {sys.version.split()[0]}",
    ]
    dev = torch.device("cuda")
    for b in Backend:
        if b != Backend.AUTO:
            lines.append(
                f"- attention {b}: {why_unavailable(b, dev, torch.bfloat16) or 'available'}"
            )
    peak = matmul_peak()
    lines.append(
        f"- bf16 matmul 8192^3: **{peak:.0f} TFLOP/s** (vendor dense bf16 {VENDOR_BF16_TFLOPS:.0f})"
    )
    report(out, "\n".join(lines))
    return peak


def section_tests(out: Path) -> None:
    cmd = [
        sys.executable, "-m", "pytest", "-q", "-n0", "-p", "no:cacheprovider", "--timeout", "300",
        "-o", "addopts=-ra --strict-markers",
        "tests/test_attention.py", "tests/test_fused.py", "tests/test_dit_packing.py",
        # it builds the trainer, which imports DeepSpeed: not on the GPU image, and CPU-only anyway
        "--deselect", "tests/test_dit_packing.py::test_activation_checkpointing_recomputes_blocks_and_saves_less_for_backward",
    ]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    (out / "gpu_tests.log").write_text(proc.stdout + proc.stderr)
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
    report(
        out,
        f"## GPU tests (rc {proc.returncode}, {time.perf_counter() - t0:.0f} s)\n"
        f"`{' '.join(cmd[1:])}`\n```\n{tail}\n```",
    )


def section_kernels(out: Path) -> None:
    t0 = time.perf_counter()
    cmd = [sys.executable, "bench/kernels.py", "--iters", "10"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    report(
        out,
        f"## bench/kernels.py (rc {proc.returncode}, {time.perf_counter() - t0:.0f} s)\n"
        f"{proc.stdout}\n{proc.stderr[-3000:] if proc.returncode else ''}",
    )


def dit_step(
    size: str,
    attn: str,
    fused: str,
    peak: float,
    mix: str = "video mix",
    steps: int = 8,
    profile: Path | None = None,
) -> str:
    torch.manual_seed(0)
    cfg = DiTConfig(size=size, in_channels=16, patch=(1, 2, 2), text_dim=384)
    cfg.attn_backend, cfg.fused_impl = attn, fused
    model = DiT(cfg).to("cuda", torch.bfloat16)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    g = torch.Generator().manual_seed(0)
    shapes, text_lens = MIXES[mix]
    latents = [torch.randn(s, generator=g) for s in shapes]
    texts = [torch.randn(n, 384, generator=g) for n in text_lens]
    tokens, batch = pack(latents, texts, cfg.patch)
    tokens, batch = tokens.to("cuda", torch.bfloat16), batch.to("cuda")
    target = torch.randn_like(tokens, dtype=torch.float32)
    t = (torch.rand(len(shapes), device="cuda") * 1000).to(torch.bfloat16)
    lengths = (batch.cu_seqlens[1:] - batch.cu_seqlens[:-1]).tolist()
    flops = sum(n * model.flops_per_token(n, m) for n, m in zip(lengths, text_lens, strict=True))

    def step() -> None:
        loss = (model(tokens, t, batch).float() - target).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    torch.cuda.reset_peak_memory_stats()
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    sec = (time.perf_counter() - t0) / steps
    if profile is not None:
        kernel_table(step, profile)
    tflops = flops / sec / 1e12
    mem = torch.cuda.max_memory_allocated() / 2**30
    return (
        f"| {size} | {mix} | {attn} | {fused} | {sum(lengths)} | {sec * 1e3:.0f} | {sum(lengths) / sec:,.0f} "
        f"| {tflops:.0f} | {100 * tflops / peak:.1f}% | {100 * tflops / VENDOR_BF16_TFLOPS:.1f}% "
        f"| {mem:.1f} |"
    )


# Attention first: FlashAttention's kernel names carry cutlass types.
GROUPS = [
    ("attention", ("flash", "fmha", "attention", "cudnn", "sdpa")),
    ("matmul (cuBLAS/CUTLASS)", ("gemm", "xmma", "cutlass", "nvjet", "cublas", "splitk")),
    ("Triton (adaLN, RoPE)", ("triton",)),
    ("optimizer", ("adam", "multi_tensor")),
    ("index (per-sample rows)", ("index",)),
    ("elementwise / reduce / copy", ("elementwise", "vectorized", "reduce", "copy", "cat", "gather", "scatter")),
]  # fmt: skip


def kernel_table(step, path: Path) -> None:  # type: ignore[no-untyped-def]
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(2):
            step()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.self_device_time_total > 0]
    total = sum(e.self_device_time_total for e in events)
    groups: dict[str, float] = {}
    for e in events:
        low = e.key.lower()
        name = next((g for g, keys in GROUPS if any(k in low for k in keys)), "other")
        groups[name] = groups.get(name, 0.0) + e.self_device_time_total
    lines = [
        f"GPU kernel time over 2 steps: {total / 1e3:.0f} ms\n",
        "| group | ms | share |",
        "|---|---|---|",
    ]
    lines += [
        f"| {g} | {us / 1e3:.1f} | {100 * us / total:.1f}% |"
        for g, us in sorted(groups.items(), key=lambda kv: -kv[1])
    ]
    lines += ["", "| kernel (top 15) | calls | ms | share |", "|---|---|---|---|"]
    for e in sorted(events, key=lambda e: -e.self_device_time_total)[:15]:
        lines.append(
            f"| `{e.key[:90]}` | {e.count} | {e.self_device_time_total / 1e3:.1f} "
            f"| {100 * e.self_device_time_total / total:.1f}% |"
        )
    path.write_text("\n".join(lines) + "\n")


def section_dit(out: Path, peak: float, sizes: list[str], extra: list[str]) -> None:
    report(
        out,
        "## DiT training step, bf16 weights and activations, fused AdamW, one GPU\n"
        f"Packed mix: {len(MIX)} samples (480p 2 s, 256p 5 s, 256p 2 s clips and five 512^2 images "
        "as 16-channel 4x8x8 latents, patch 1x2x2), captions of 0-120 MiniLM tokens. "
        "Model FLOPs from `DiT.flops_per_token` (3x forward).\n\n"
        "| size | batch | attention | fused ops | tokens | ms/step | tokens/s | TFLOP/s "
        "| MFU (measured peak) | MFU (989) | peak GiB |\n|---|---|---|---|---|---|---|---|---|---|---|",
    )
    v, im = "video mix", "128 images"
    runs = [(s, "auto", "auto", v) for s in sizes]
    runs += [("B", "sdpa", "auto", v), ("XL", "sdpa", "auto", v), ("B", "auto", "torch", v)]
    runs += [("B", "auto", "auto", im), ("B", "sdpa", "auto", im)]
    if extra:  # --runs SIZE:ATTN:FUSED:MIX,... replaces the list ("v"/"im" for the mixes)
        parts = [r.split(":") for r in extra]
        runs = [(a, b, c, {"v": v, "im": im}[d]) for a, b, c, d in parts]
    for size, attn, fused, mix in runs:
        prof = out / "profile.md" if (size, attn, fused, mix) == ("XL", "auto", "auto", v) else None
        try:
            report(out, dit_step(size, attn, fused, peak, mix, profile=prof))
            torch.cuda.empty_cache()
        except Exception as e:  # one configuration failing (memory, a kernel) must not end the run
            report(
                out, f"| {size} | {attn} | {fused} | failed: {type(e).__name__}: {str(e)[:200]} |"
            )
            torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--sizes", default="S,B,L,XL")
    ap.add_argument("--only", default="machine,tests,kernels,dit")
    ap.add_argument("--runs", default="", help="DiT runs SIZE:ATTN:FUSED:v|im, comma-separated")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/gpu.py needs a CUDA GPU")
    args.out.mkdir(parents=True, exist_ok=True)
    only = args.only.split(",")
    t0 = time.perf_counter()
    peak = section_machine(args.out)
    for name, fn in (
        ("tests", lambda: section_tests(args.out)),
        ("kernels", lambda: section_kernels(args.out)),
        (
            "dit",
            lambda: section_dit(
                args.out, peak, args.sizes.split(","), [r for r in args.runs.split(",") if r]
            ),
        ),
    ):
        if name in only:
            try:
                fn()
            except Exception:
                report(args.out, f"## {name} failed\n```\n{traceback.format_exc()[-3000:]}\n```")
    if (args.out / "profile.md").exists():
        report(args.out, "## DiT-XL step by GPU kernel\n" + (args.out / "profile.md").read_text())
    report(args.out, f"\nbench/gpu.py done in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
