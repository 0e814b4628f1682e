"""Diffusion objectives and samplers; the model is only a denoiser. Configs import light."""

from trainer.diffusion.config import DDPMConfig, FlowConfig
from trainer.lazy import lazy_getattr

_LAZY = {
    "Denoiser": "trainer.diffusion.common",
    "per_sample": "trainer.diffusion.common",
    "reduce_loss": "trainer.diffusion.common",
    "GaussianDiffusion": "trainer.diffusion.ddpm",
    "make_betas": "trainer.diffusion.ddpm",
    "RectifiedFlow": "trainer.diffusion.flow",
}

__all__ = ["DDPMConfig", "FlowConfig", *_LAZY]

__getattr__ = lazy_getattr(_LAZY)
