"""What a VAE training run measures and writes on its held-out clips: PSNR, the latents'
statistics, and side-by-side reconstructions (mp4 and png)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from infra.media import write_mp4
from trainer.vae.model import CausalVAE
from trainer.vae.pixels import to_uint8


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a.clamp(-1, 1) - b) / 2).pow(2).mean().item()
    return 10 * math.log10(1 / max(mse, 1e-12))


def reconstruct(
    vae: CausalVAE, x: torch.Tensor, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Posterior-mean reconstruction of one clip (3, T, H, W), returned as float32 on the CPU."""
    with torch.no_grad():
        z = vae.encode(x[None].to(device, dtype)).mean
        return vae.decode(z)[0].float().cpu()


def evaluate(
    vae: CausalVAE, held: list[torch.Tensor], device: torch.device, dtype: torch.dtype
) -> float:
    vae.eval()
    scores = [psnr(reconstruct(vae, x, device, dtype), x) for x in held]
    vae.train()
    return float(np.mean(scores))


def set_latent_stats(vae: CausalVAE, held: list[torch.Tensor], device: torch.device) -> None:
    """The latents' per-channel mean and spread on the held-out clips, kept in the config so
    that encode can normalise them."""
    with torch.no_grad():
        z = torch.cat([vae.encode(x[None].to(device)).mean.flatten(2).cpu() for x in held], dim=2)[
            0
        ]
    vae.cfg.latent_mean = z.mean(1).tolist()
    vae.cfg.latent_std = z.std(1).clamp(min=1e-4).tolist()


def save_reconstructions(
    vae: CausalVAE, held: list[torch.Tensor], out: Path, device: torch.device
) -> None:

    out.mkdir(parents=True, exist_ok=True)
    vae.eval()
    for i, x in enumerate(held):
        rec = reconstruct(vae, x, device, torch.float32).clamp(-1, 1)
        pair = torch.cat([x, rec], dim=3)  # original | reconstruction, side by side
        frames = to_uint8(pair)
        write_mp4(out / f"heldout-{i}.mp4", frames)
        Image.fromarray(np.concatenate(list(frames), axis=0)).save(out / f"heldout-{i}.png")
