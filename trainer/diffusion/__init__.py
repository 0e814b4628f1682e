"""Diffusion objectives and samplers; the model is only a denoiser. Configs import light."""

from typing import Any

from trainer.diffusion.config import DDPMConfig, FlowConfig

_LAZY = {
    "Denoiser": "trainer.diffusion.common",
    "per_sample": "trainer.diffusion.common",
    "reduce_loss": "trainer.diffusion.common",
    "GaussianDiffusion": "trainer.diffusion.ddpm",
    "make_betas": "trainer.diffusion.ddpm",
    "RectifiedFlow": "trainer.diffusion.flow",
}

__all__ = ["DDPMConfig", "FlowConfig", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)
