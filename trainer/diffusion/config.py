"""Diffusion objective settings (no torch import: the CLI and config loader read them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Schedule = Literal["linear", "scaled_linear", "cosine"]


@dataclass
class DDPMConfig:
    schedule: Schedule = "linear"
    """Beta schedule: DDPM's linear, the 'quadratic' scaled-linear (Stable Diffusion), or the cosine
    schedule of Nichol & Dhariwal 2021."""
    num_timesteps: int = 1000
    """Diffusion steps T."""
    beta_start: float = 1e-4
    """First beta of the linear/scaled-linear schedules (for T=1000; rescaled for other T)."""
    beta_end: float = 0.02
    """Last beta of the linear/scaled-linear schedules."""
    prediction: Literal["epsilon", "v"] = "epsilon"
    """What the model predicts: the noise, or v = sqrt(a)·eps - sqrt(1-a)·x0 (Salimans & Ho 2022)."""


@dataclass
class FlowConfig:
    timestep_sampling: Literal["logit_normal", "uniform"] = "logit_normal"
    """How training draws t (before the shift)."""
    logit_mean: float = 0.0
    """Mean of the logit-normal's underlying normal."""
    logit_std: float = 1.0
    """Std of the logit-normal's underlying normal."""
    shift_base_tokens: int = 256
    """Token count at which the time shift is 1; larger samples are shifted toward noise. 0: off."""
    prediction: Literal["velocity", "x0"] = "velocity"
    """What the model outputs: the velocity eps - x0, or an x0 estimate F with EDM's
    preconditioning (Karras et al. 2022) in the flow's time: x0 = c_skip·x_t + c_out·F. F is x0
    itself at high noise (x-prediction, as in Li & He 2025), a residual on x_t near t = 0, and the
    velocity loss on it stays bounded at every t (plain x-prediction weighs its error by 1/t²)."""
    sigma_data: float = 1.0
    """The latents' standard deviation assumed by that preconditioning."""
    foreground_weight: float = 0.0
    """Training loss weight of a token: 1 + this x how far its clean latent is from its sample's
    background (the per-dimension median token), scaled to [0, 1] per sample. 0: off. Puts the
    loss where the content is when most of a clip is plain background (the demo's shapes)."""
    contrastive: float = 0.0
    """Contrastive flow matching (Stoica et al. 2025): the training loss also pushes each
    sample's predicted velocity away from another sample's target, by this weight (they use
    0.05). The model cannot lean on what every caption's video has in common, so the caption's
    own detail must carry the prediction. Pairs are samples of one latent shape in a micro-batch.
    0: off."""
