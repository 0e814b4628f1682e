"""Muon's orthogonalisation on CPU: torch.optim.Muon (bf16) vs trainer/muon.py (fp32 off CUDA).

    python bench/muon.py [--steps 10] [--threads 1]

On the demo preset's DiT (4 blocks of 128; its Muon takes the blocks' 36 matrices), one thread as
each of the demo's two ranks gets on a 2-core machine, in one run: the Newton-Schulz iterations
alone, a whole optimizer step (Muon + AdamW), and a forward + backward of one 2048-token
micro-batch (the demo's per-rank share of a step), each the median over `--steps` repeats.
torch's Muon rounds every update to bf16 before orthogonalising; a CPU without bf16 matmul
instructions (AVX512-BF16 or AMX) runs those several times slower than fp32.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: allocations, the first call's dispatch
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def cpu_bf16() -> str:
    flags = set()
    if Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    native = sorted(flags & {"avx512_bf16", "amx_bf16"})
    return ", ".join(native) if native else "none (bf16 matmuls are emulated)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch
    from torch.optim._muon import _zeropower_via_newtonschulz

    from infra.config import load
    from infra.schema import SpacetimeConfig
    from infra.schema.presets import get_preset
    from trainer import muon
    from trainer.model.packing import pack
    from trainer.train import build_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = load(SpacetimeConfig, get_preset("demo"), None, ["train.model.in_channels=4"]).train
    model = build_model(cfg)
    matrices = muon.muon_params(model)[0]
    grads = [torch.randn_like(p) for p in matrices]

    # 14 clips of 9 latent frames at 16x16 (the demo's 17x64x64 through its 2x/4x VAE): 2016
    # tokens at 1x4x4, the preset's 2048-token micro-batch.
    g = torch.Generator().manual_seed(0)
    lat = [torch.randn(4, 9, 16, 16, generator=g) for _ in range(14)]
    x0, batch = pack(lat, [torch.randn(12, cfg.model.text_dim, generator=g) for _ in lat], cfg.model.patch)  # fmt: skip
    t = torch.rand(len(lat))

    def fwd_bwd() -> None:
        model.zero_grad(set_to_none=True)
        (model(x0, t, batch) - x0).pow(2).mean().backward()

    fwd_bwd()
    kw = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "momentum": 0.95}
    ours = muon.MuonAdamW(model, **kw)  # type: ignore[arg-type]
    theirs = muon.MuonAdamW(model, **kw)  # type: ignore[arg-type]
    theirs.muon = torch.optim.Muon(
        [theirs.param_groups[0]], lr=kw["lr"], weight_decay=kw["weight_decay"],
        momentum=kw["momentum"], adjust_lr_fn="match_rms_adamw",
    )  # fmt: skip
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def ns_torch() -> None:
        for gr in grads:
            _zeropower_via_newtonschulz(gr, muon.NS_COEFFICIENTS, muon.NS_STEPS, muon.NS_EPS)

    def ns_ours() -> None:
        for gr in grads:
            muon.orthogonalize(gr)

    rows = {
        f"orthogonalise the {len(matrices)} matrices": (
            _median_ms(ns_torch, args.steps),
            _median_ms(ns_ours, args.steps),
        ),
        "optimizer step (Muon + AdamW)": (
            _median_ms(theirs.step, args.steps),
            _median_ms(ours.step, args.steps),
        ),
    }
    model.load_state_dict(state)  # the steps above moved it; the micro-batch's cost does not care
    fb = _median_ms(fwd_bwd, args.steps)
    n_tok = int(batch.cu_seqlens[-1])
    print(
        f"Muon on the demo DiT ({sum(p.numel() for p in matrices) / 1e6:.2f}M of "
        f"{model.num_params() / 1e6:.2f}M parameters in Muon's {len(matrices)} matrices), "
        f"{args.threads} thread(s), median of {args.steps}; CPU bf16 instructions: {cpu_bf16()}"
    )
    print()
    print("| ms | torch.optim.Muon (bf16) | spacetime (fp32 on CPU) | ratio |")
    print("|---|---|---|---|")
    for name, (a, b) in rows.items():
        print(f"| {name} | {a:.1f} | {b:.1f} | {a / b:.2f}x |")
    print(f"| forward + backward, one micro-batch of {n_tok} tokens | {fb:.1f} | {fb:.1f} | |")
    step_a = fb + rows["optimizer step (Muon + AdamW)"][0]
    step_b = fb + rows["optimizer step (Muon + AdamW)"][1]
    print(f"| **a rank's step (the two above)** | **{step_a:.1f}** | **{step_b:.1f}** "
          f"| **{step_a / step_b:.2f}x** |")  # fmt: skip


if __name__ == "__main__":
    main()
