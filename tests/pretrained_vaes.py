"""Tiny random-weight diffusers video autoencoders of the four families spacetime reads, saved
with `save_pretrained` as a user's downloaded folder would be (the real weights cannot be
downloaded here; the classes, configs, normalisation and folder format are the real ones)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

FAMILIES = ("wan", "hunyuan", "cogvideox", "ltx")


def build(family: str) -> Any:
    import diffusers

    torch.manual_seed(0)
    if family == "wan":  # 16 latent channels, as Wan's; per-channel mean/std in the config
        return diffusers.AutoencoderKLWan(
            base_dim=8,
            z_dim=16,
            dim_mult=[1, 2, 2, 2],
            num_res_blocks=1,
            temperal_downsample=[False, True, True],
            latents_mean=[0.05 * i - 0.4 for i in range(16)],
            latents_std=[1.0 + 0.1 * i for i in range(16)],
        )
    if family == "hunyuan":
        return diffusers.AutoencoderKLHunyuanVideo(
            latent_channels=4,
            block_out_channels=(8, 8, 16, 16),
            layers_per_block=1,
            norm_num_groups=4,
            scaling_factor=0.476986,
        )
    if family == "cogvideox":
        return diffusers.AutoencoderKLCogVideoX(
            latent_channels=4,
            block_out_channels=(8, 8, 16, 16),
            layers_per_block=1,
            norm_num_groups=4,
            scaling_factor=1.15258426,
        )
    if family == "ltx":  # 32x space, 8x time; latents_mean/std are buffers, not config
        model = diffusers.AutoencoderKLLTXVideo(
            latent_channels=8,
            block_out_channels=(8, 8, 16, 16),
            decoder_block_out_channels=(8, 8, 16, 16),
            layers_per_block=(1, 1, 1, 1, 1),
            decoder_layers_per_block=(1, 1, 1, 1, 1),
            scaling_factor=0.9,
        )
        model.latents_mean.copy_(torch.linspace(-0.3, 0.3, 8))
        model.latents_std.copy_(torch.linspace(0.8, 1.6, 8))
        return model
    raise ValueError(family)


def save(family: str, path: Path) -> Path:
    build(family).save_pretrained(path)
    return path
