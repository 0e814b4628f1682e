"""VAE benchmarks on this machine, measured in one run.

    python bench/vae.py [--sizes tiny,S] [--resolutions 64x64,128x128,256x256] [--frames 17]
                        [--vae DIR | --train-steps 300] [--pretrained-frames 9] [--only pretrained]

1. Speed and memory: encode and decode frames/s and peak memory of whole-clip, temporally chunked
   (exact) and chunked + spatially tiled paths, per VAE size and resolution (random weights: speed
   does not depend on them). Peak memory is the rise of resident memory during the call on CPU
   (the kernel's high-water mark, reset before each call) or torch's peak allocation on CUDA.
2. Pretrained families (diffusers: Wan, HunyuanVideo, CogVideoX, LTX-Video) through spacetime's
   VAE interface (trainer.vae.pretrained), at tiny widths (the tests' configs) and at the
   families' real widths (their default configs, random weights: speed and memory do not depend
   on them): encode/decode frames/s and peak memory, whole and with the family's own tiling.
3. Quality: held-out PSNR of a trained VAE on whole shapes clips at their native resolutions,
   untiled and tiled, and the tiled reconstruction against the untiled one. Without `--vae` the
   demo's VAE is trained first (`--train-steps` steps on generated shapes videos).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.memory import exact_heap, peak_mb, reset_peak  # noqa: E402
from trainer.vae.config import VAEConfig  # noqa: E402
from trainer.vae.model import CausalVAE  # noqa: E402
from trainer.vae.pixels import to_signed  # noqa: E402


def measure(fn: Callable[[], torch.Tensor], device: torch.device) -> tuple[float, float]:
    """(seconds, peak MiB above the level before the call) of one call."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = reset_peak() * 2**20
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = peak_mb() * 2**20
    return time.perf_counter() - t0, (peak - base) / 2**20


def paths(vae: CausalVAE, x: torch.Tensor, tile: int) -> dict[str, tuple[Callable, Callable]]:
    """name -> (encode(), decode(z)) of each path; a quarter of a tile overlaps its neighbour."""
    lt = tile // vae.cfg.space_stride
    return {
        "whole": (lambda: vae.encode(x).mean, vae.decode),
        "chunked": (
            lambda: vae.encode_chunked(x, chunk_latent_frames=2),
            lambda z: vae.decode_chunked(z, chunk_latent_frames=2),
        ),
        f"chunked+tile {tile}px": (
            lambda: vae.encode_chunked(x, 2, tile=tile, overlap=tile // 4),
            lambda z: vae.decode_chunked(z, 2, tile=lt, overlap=lt // 4),
        ),
    }


def speed_rows(
    sizes: list[str], resolutions: list[tuple[int, int]], frames: int, device: torch.device
) -> list[str]:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rows = []
    for size in sizes:
        vae = CausalVAE(VAEConfig.named(size)).to(device, dtype).eval()
        ss = vae.cfg.space_stride
        for h, w in resolutions:
            x = torch.rand(1, 3, frames, h, w, device=device, dtype=dtype) * 2 - 1
            tile = max(ss * 4, min(h, w) // 2)
            modes = paths(vae, x, tile)
            with torch.no_grad():
                vae.encode(x[:, :, :5, : ss * 2, : ss * 2])  # warm-up (allocator, kernels)
                for mode, (enc, dec) in modes.items():
                    z = enc()
                    te, me = measure(enc, device)
                    td, md = measure(lambda z=z, dec=dec: dec(z), device)
                    rows.append(
                        f"| {size} | {frames}x{h}x{w} | {mode} | {frames / te:.1f} | "
                        f"{frames / td:.1f} | {me:.0f} | {md:.0f} |"
                    )
                    print(rows[-1], flush=True)
    return rows


def pretrained_rows(frames: int, side: int, device: torch.device, work: Path) -> list[str]:
    """Each diffusers family, tiny and at its real width, saved as a folder and loaded through
    trainer.vae.pretrained.VideoVAE (what `spacetime encode --vae DIR` runs)."""
    import diffusers

    from tests.pretrained_vaes import FAMILIES, build
    from trainer.vae.pretrained import DIFFUSERS_FAMILIES, VideoVAE

    classes = {f: c for f, c in zip(FAMILIES, DIFFUSERS_FAMILIES, strict=True)}
    rows = []
    for family in FAMILIES:
        for width in ("tiny", "real"):
            torch.manual_seed(0)
            model = build(family) if width == "tiny" else getattr(diffusers, classes[family])()
            params = sum(p.numel() for p in model.parameters()) / 1e6
            folder = work / f"{family}-{width}"
            model.save_pretrained(folder)
            del model
            vae = VideoVAE(folder)
            vae.model.to(device)
            x = torch.rand(1, 3, frames, side, side, device=device) * 2 - 1
            for mode, tile in (("whole", None), (f"tile {side // 2}px", side // 2)):
                with torch.no_grad():
                    z = vae.encode(x, tile=tile)
                    lt = tile // vae.space_stride if tile else None
                    te, me = measure(lambda v=vae, x=x, t=tile: v.encode(x, tile=t), device)
                    td, md = measure(lambda v=vae, z=z, lt=lt: v.decode(z, tile=lt), device)
                rows.append(
                    f"| {classes[family]} {width} ({params:.1f}M) | {frames}x{side}x{side} -> "
                    f"{'x'.join(map(str, z.shape[1:]))} | {mode} | {frames / te:.2f} | "
                    f"{frames / td:.2f} | {me:.0f} | {md:.0f} |"
                )
                print(rows[-1], flush=True)
            del vae
    return rows


def trained_vae(args: argparse.Namespace, work: Path) -> tuple[Path, Path]:
    """(VAE directory, clip shards of videos it never saw) for the quality table."""
    from data_pipeline.job import run_shard
    from infra.config import load
    from infra.demo import shapes
    from infra.schema import SpacetimeConfig
    from infra.schema.presets import get_preset
    from infra.storage import Storage
    from trainer.vae.train import train_vae

    cfg = load(SpacetimeConfig, get_preset("demo"), None, [])
    held = shapes.generate(work / "held-videos", 24, seed=12345)
    run_shard(str(held), str(work / "held"), cfg.shard, cfg.storage)
    if args.vae:
        return Path(args.vae), work / "held"
    manifest = shapes.generate(work / "videos", args.videos, seed=1)
    run_shard(str(manifest), str(work / "clips"), cfg.shard, cfg.storage)
    cfg.vae_train.steps = args.train_steps
    train_vae(str(work / "clips"), str(work / "vae"), cfg.vae_train, Storage(cfg.storage))
    return work / "vae" / "vae", work / "held"


def quality_rows(vae_dir: Path, clips: Path, device: torch.device, name: str) -> list[str]:
    from infra.media import decode_frames
    from infra.shards import iter_samples, list_shards
    from infra.storage import Storage
    from trainer.data.raw import latent_frames
    from trainer.vae.heldout import psnr

    vae = CausalVAE.from_pretrained(vae_dir).to(device).eval()
    ss = vae.cfg.space_stride
    untiled, tiled, agree = [], [], []
    for shard in list_shards(str(clips), Storage()):
        for s in iter_samples(shard, Storage()):
            f = decode_frames(s["mp4"], 33)
            n = latent_frames(len(f), len(f), vae.cfg.time_stride)
            x = to_signed(f[:n])[None].to(device)
            tile = 8 * ss  # smaller than every clip side, so tiling really happens
            with torch.no_grad():
                a = vae.decode(vae.encode(x).mean).clamp(-1, 1)
                z = vae.encode_chunked(x, 2, tile=tile, overlap=tile // 2)
                b = vae.decode_chunked(z, 2, tile=tile // ss, overlap=tile // ss // 2).clamp(-1, 1)
            untiled.append(psnr(a[0].cpu(), x[0].cpu()))
            tiled.append(psnr(b[0].cpu(), x[0].cpu()))
            agree.append(psnr(b[0].cpu(), a[0].cpu()))
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    return [
        f"| {name} ({ss}x space, {vae.cfg.latent_channels} ch) | {len(untiled)} "
        f"| {mean(untiled):.2f} | {mean(tiled):.2f} | {mean(agree):.2f} (min {min(agree):.2f}) |"
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="tiny,S")
    ap.add_argument("--resolutions", default="64x64,128x128,256x256")
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--vae", default="", help="a trained VAE directory for the quality table")
    ap.add_argument("--train-steps", type=int, default=600)
    ap.add_argument("--videos", type=int, default=96)
    ap.add_argument("--pretrained-frames", type=int, default=9, help="1 + 8k (LTX-Video)")
    ap.add_argument("--pretrained-side", type=int, default=256)
    ap.add_argument(
        "--only", default="", help="sections, comma-separated: own, pretrained, quality"
    )
    args = ap.parse_args()
    only = set(filter(None, args.only.split(","))) or {"own", "pretrained", "quality"}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    exact_heap()
    res = [tuple(int(v) for v in r.split("x")) for r in args.resolutions.split(",")]
    what = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU {os.cpu_count()} cores"
    print(
        f"vae bench: {what}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"{platform.machine()}, {time.strftime('%Y-%m-%d')}\n"
    )
    head = "| encode frames/s | decode frames/s | encode peak MiB | decode peak MiB |"
    if "own" in only:
        print(f"| VAE | clip | path {head}")
        print("|---|---|---|---|---|---|---|")
        speed_rows(args.sizes.split(","), res, args.frames, device)  # type: ignore[arg-type]
    if "pretrained" in only:
        print(f"\n| pretrained family, width (params) | clip -> latents | path {head}")
        print("|---|---|---|---|---|---|---|")
        with tempfile.TemporaryDirectory() as tmp:
            pretrained_rows(args.pretrained_frames, args.pretrained_side, device, Path(tmp))
    if "quality" not in only:
        return
    with tempfile.TemporaryDirectory() as tmp:
        vae_dir, clips = trained_vae(args, Path(tmp))
        print(
            "\n| trained VAE | held-out clips | PSNR untiled dB | PSNR tiled dB | tiled vs untiled dB |"
        )
        print("|---|---|---|---|---|")
        name = args.vae or f"demo VAE, {args.train_steps} steps on {args.videos} videos"
        for row in quality_rows(vae_dir, clips, device, name):
            print(row)


if __name__ == "__main__":
    main()
