"""Configuration of sampling (`spacetime sample`, the demo's evaluation, training previews; no
torch import: the CLI and config loader read it)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal


@dataclass
class SampleConfig:
    mode: Literal["t2v", "i2v", "extend", "extend_backward", "interpolate", "edit"] = "t2v"
    """t2v (t2i: frames=1); i2v: first frame given; extend: continue a given video forward, or
    backward (its frames at the end); interpolate: two videos at the start and the end; edit: SDEdit,
    the given video noised to `strength` and denoised with the new prompt."""
    frames: int = 17
    """Output frames: 1 + k x the VAE's time stride (1 + 4k for a 4x VAE, 1 + 2k for a 2x one;
    1 is an image). Checked against the VAE when sampling."""
    height: int = 64
    width: int = 64
    steps: int = 30
    """Sampler steps."""
    sampler: Literal["auto", "euler", "ddim", "ddpm"] = "auto"
    """auto: Euler for flow models, DDIM for DDPM models; ddpm: ancestral (eta = 1)."""
    eta: float = 0.0
    """DDIM stochasticity (0: deterministic)."""
    guidance: float = 4.0
    """Classifier-free guidance scale (1: off)."""
    strength: float = 0.6
    """SDEdit noise level in (0, 1]."""
    cond_latent_frames: int = 1
    """Latent frames taken from each given video in extend and interpolate modes."""
    seed: int = 0
    use_ema: bool = True
    """Sample with the EMA weights when the checkpoint has them."""
    fps: int = 8

    def validate(self) -> None:
        if self.frames < 1:
            raise ValueError(f"frames must be >= 1, got {self.frames}")
        if self.height < 1 or self.width < 1:
            raise ValueError(f"height and width must be >= 1, got {self.height}x{self.width}")
        if self.steps < 1 or self.cond_latent_frames < 1 or self.fps < 1:
            raise ValueError("steps, cond_latent_frames and fps must be >= 1")
        if not 0 < self.strength <= 1:
            raise ValueError(f"strength must be in (0, 1], got {self.strength}")
        if not math.isfinite(self.guidance) or self.guidance < 0 or not 0 <= self.eta <= 1:
            raise ValueError(
                f"guidance must be >= 0 and eta in [0, 1], got {self.guidance}, {self.eta}"
            )


@dataclass
class PreviewConfig:
    """Sample previews during training: rank 0 samples the fixed prompts from the checkpoint just
    saved (EMA weights when there are some) into {run}/previews/step-N/ (mp4s, png contact sheet)
    and TensorBoard. A failed preview is logged and training goes on."""

    every: int = 0
    """Steps between previews, a multiple of checkpoint_every (0: off)."""
    prompts: list[str] = field(
        default_factory=lambda: ["a red circle moving left", "a blue square moving up"]
    )
    vae: str = ""
    """VAE directory to decode with (default: train.data.vae)."""
    text_encoder: str | None = None
    """Text encoder directory (default: train.data.text_encoder, else MiniLM)."""
    sample: SampleConfig = field(default_factory=lambda: SampleConfig(steps=20))
