"""`spacetime vae reconstruct`: judge a VAE on one video before encoding a dataset with it. The
video goes through encode and decode; the input and its reconstruction are written side by side
(`side_by_side.mp4`, input left) with PSNR and SSIM in `reconstruction.json` and on the console."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from infra.media import read_frames, write_mp4
from trainer.vae.heldout import psnr
from trainer.vae.pixels import to_signed, to_uint8
from trainer.vae.pretrained import VideoVAE, crop_to_stride

log = logging.getLogger(__name__)


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean SSIM (Wang et al. 2004: 11-tap Gaussian window, sigma 1.5, K1 0.01, K2 0.03) of two
    (3, T, H, W) videos in [-1, 1], per frame and channel. Written out: torch has no SSIM and
    this is the standard definition in a dozen lines, not worth a dependency."""
    x = (a.clamp(-1, 1) + 1).transpose(0, 1).reshape(-1, 1, *a.shape[-2:]) / 2  # (T*3, 1, H, W)
    y = (b.clamp(-1, 1) + 1).transpose(0, 1).reshape(-1, 1, *b.shape[-2:]) / 2
    g = torch.exp(-((torch.arange(11, dtype=torch.float64) - 5) ** 2) / (2 * 1.5**2))
    g = (g / g.sum()).to(x.dtype)
    win = (g[:, None] * g[None, :])[None, None]

    def blur(z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(z, win)  # 'valid' windows only, as the reference implementation

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s.mean())


def load_video(path: str, vae: VideoVAE, max_frames: int, max_side: int) -> torch.Tensor:
    """(1, 3, T, H, W) in [-1, 1]: the first 1 + stride*k frames (at most `max_frames`), scaled so
    the longer side is at most `max_side` (0: native), centre-cropped to the VAE's stride."""
    frames = read_frames(path, max_frames)
    ts = vae.time_stride
    t = 1 + ts * ((len(frames) - 1) // ts)
    x = to_signed(frames[:t])  # (3, T, H, W)
    h, w = x.shape[-2:]
    if max_side and max(h, w) > max_side:
        scale = max_side / max(h, w)
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        x = F.interpolate(x.transpose(0, 1), size=size, mode="bilinear", antialias=True)
        x = x.transpose(0, 1).clamp(-1, 1)
    x = crop_to_stride(x, vae.space_stride)
    if min(x.shape[-2:]) == 0:
        raise ValueError(f"{path}: smaller than the VAE's {vae.space_stride}-pixel stride")
    return x[None]


def reconstruct(
    vae_dir: str, video: str, output: str, max_frames: int = 33, max_side: int = 256, tile: int = 0
) -> dict[str, Any]:
    t0 = time.monotonic()
    vae = VideoVAE(vae_dir)
    x = load_video(video, vae, max_frames, max_side)
    z = vae.encode(x, tile=tile or None)
    y = vae.decode(z, tile=(tile // vae.space_stride) or None).clamp(-1, 1)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)

    pair = np.concatenate([to_uint8(x[0]), to_uint8(y[0])], axis=2)  # input | reconstruction
    write_mp4(out / "side_by_side.mp4", pair[:, : pair.shape[1] // 2 * 2, : pair.shape[2] // 2 * 2])
    result = {
        "video": video,
        "vae": vae.path,
        "family": vae.info.family,
        "vae_tag": vae.tag,
        "frames": int(x.shape[2]),
        "size": [int(x.shape[3]), int(x.shape[4])],
        "latent_shape": list(z.shape[1:]),
        "psnr_db": psnr(y[0], x[0]),
        "ssim": ssim(y[0], x[0]),
        "seconds": round(time.monotonic() - t0, 2),
    }
    (out / "reconstruction.json").write_text(json.dumps(result, indent=2))
    log.info(
        "vae reconstruct: %s through %s (%s): %d frames %dx%d -> latents %s, PSNR %.2f dB, "
        "SSIM %.4f in %.1fs -> %s",
        video,
        vae.path,
        vae.info.family,
        result["frames"],
        result["size"][1],
        result["size"][0],
        "x".join(map(str, result["latent_shape"])),
        result["psnr_db"],
        result["ssim"],
        result["seconds"],
        out / "side_by_side.mp4",
    )
    if not math.isfinite(result["psnr_db"]):
        raise ValueError(f"{vae_dir}: the reconstruction is not finite")
    return result
