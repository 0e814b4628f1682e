"""`python bench/kernels.py`: time each available attention backend and fused op on a packed workload.

Mixed sequence lengths (a packed NaViT-style batch), head dims 64 and 128; bf16 on GPU, fp32 on CPU.
On a GPU also FlashAttention-3's headline shape (16 heads of 128, 2 x 8192 tokens, no mask) to set
beside its ~740 TFLOP/s forward. Reports milliseconds and achieved TFLOP/s for the forward and for
forward+backward (FLOPs as flash-attention's benchmarks count them: 4·L_q·L_k·D·H per sequence
forward, 3.5x that for forward+backward) and the max error against the float64 reference.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

# Run as a script, this file's folder comes first on sys.path and its name would hide the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kernels.attention import Backend, varlen_attention, why_unavailable
from kernels.fused import adaln_norm_modulate, rope_3d

LENGTHS_GPU = [4096, 1024, 2560, 333, 7000, 1, 1600]
LENGTHS_CPU = [512, 128, 300, 37, 900, 1, 200]


def _time(fn, warmup: int, iters: int, device: str) -> float:  # type: ignore[no-untyped-def]
    for _ in range(warmup):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters


def bench_attention(
    device: str, dtype: torch.dtype, heads: int, dim: int, lengths: list[int], iters: int
) -> list[str]:
    g = torch.Generator().manual_seed(0)
    total = sum(lengths)
    cu = torch.tensor(
        [0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device
    )
    q64, k64, v64 = (
        torch.randn(total, heads, dim, generator=g, dtype=torch.float64) for _ in range(3)
    )
    ref = varlen_attention(
        q64, k64, v64, cu.cpu(), cu.cpu(), max(lengths), max(lengths), backend="reference"
    )
    flops_fwd = sum(4 * n * n * dim * heads for n in lengths)
    shape = f"{heads}x{dim}, {len(lengths)} seqs, {total} tokens"
    rows = []
    for b in Backend:
        if b in (Backend.AUTO,) or why_unavailable(b, torch.device(device), dtype) is not None:
            continue
        if b == Backend.REFERENCE and device == "cuda":
            continue
        q, k, v = (t.to(device, dtype).requires_grad_() for t in (q64, k64, v64))
        grad = torch.ones(total, heads, dim, device=device, dtype=dtype)

        def fwd() -> torch.Tensor:
            return varlen_attention(q, k, v, cu, cu, max(lengths), max(lengths), backend=b)  # noqa: B023

        def step() -> None:
            fwd().backward(grad)  # noqa: B023

        with torch.no_grad():
            sec_f = _time(fwd, 2, iters, device)
            err = (fwd().double().cpu() - ref).abs().max().item()
        sec = _time(step, 2, iters, device)
        rows.append(
            f"| attention {b} | {shape} | {sec_f * 1e3:.2f} | {flops_fwd / sec_f / 1e12:.3g} "
            f"| {sec * 1e3:.2f} | {3.5 * flops_fwd / sec / 1e12:.3g} | {err:.2e} |"
        )
    return rows


def bench_fused(device: str, dtype: torch.dtype, iters: int) -> list[str]:
    n, c, heads, dim = (16384, 1152, 16, 72) if device == "cuda" else (4096, 384, 6, 64)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, generator=g).to(device, dtype)
    shift, scale = (torch.randn(4, c, generator=g).to(device, dtype) for _ in range(2))
    idx = torch.randint(0, 4, (n,), generator=g, dtype=torch.int32).to(device)
    xr = torch.randn(n, heads, dim, generator=g).to(device, dtype)
    coords = torch.randint(0, 32, (n, 3), generator=g, dtype=torch.int32).to(device)
    impls = ["torch"] + (["triton"] if device == "cuda" else [])
    rows = []
    for impl in impls:
        sec = _time(lambda: adaln_norm_modulate(x, shift, scale, idx, impl=impl), 2, iters, device)  # noqa: B023
        ref = adaln_norm_modulate(x.double(), shift.double(), scale.double(), idx, impl="torch")
        err = (
            (adaln_norm_modulate(x, shift, scale, idx, impl=impl).double() - ref).abs().max().item()
        )
        rows.append(
            f"| adaLN LayerNorm+modulate ({impl}) | {n}x{c} | {sec * 1e3:.3f} | - | - | - | {err:.2e} |"
        )
        sec = _time(lambda: rope_3d(xr, coords, impl=impl), 2, iters, device)  # noqa: B023
        ref = rope_3d(xr.double(), coords, impl="torch")
        err = (rope_3d(xr, coords, impl=impl).double() - ref).abs().max().item()
        rows.append(
            f"| 3D RoPE ({impl}) | {n}x{heads}x{dim} | {sec * 1e3:.3f} | - | - | - | {err:.2e} |"
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--iters", type=int, default=5)
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    lengths = LENGTHS_GPU if cuda else LENGTHS_CPU
    name = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"kernels bench: {name}, {dtype}, torch {torch.__version__}, packed lengths {lengths}, 8 heads (fwd+bwd for attention)"
    )
    print(
        "\n| op | shape | fwd ms | fwd TFLOP/s | fwd+bwd ms | fwd+bwd TFLOP/s "
        "| max abs error vs float64 |\n|---|---|---|---|---|---|---|"
    )
    for dim in (64, 128):
        for row in bench_attention(device, dtype, 8, dim, lengths, args.iters):
            print(row, flush=True)
    if cuda:  # FlashAttention-3's headline shape
        for row in bench_attention(device, dtype, 16, 128, [8192, 8192], args.iters):
            print(row, flush=True)
    for row in bench_fused(device, dtype, args.iters):
        print(row)


if __name__ == "__main__":
    main()
