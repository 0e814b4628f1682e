"""Diffusion objectives and samplers; the model is only a denoiser."""

from trainer.diffusion.common import Denoiser, per_sample, reduce_loss
from trainer.diffusion.ddpm import DDPMConfig, GaussianDiffusion, make_betas
from trainer.diffusion.flow import FlowConfig, RectifiedFlow

__all__ = [
    "DDPMConfig",
    "Denoiser",
    "FlowConfig",
    "GaussianDiffusion",
    "RectifiedFlow",
    "make_betas",
    "per_sample",
    "reduce_loss",
]
