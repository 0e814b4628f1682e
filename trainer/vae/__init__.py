"""The spacetime VAE. Configs import light; the model (torch) loads on first use."""

from typing import Any

from trainer.vae.config import EncodeConfig, VAEConfig, VAETrainConfig

__all__ = ["CausalVAE", "EncodeConfig", "Posterior", "VAEConfig", "VAETrainConfig"]


def __getattr__(name: str) -> Any:
    if name in ("CausalVAE", "Posterior"):
        from trainer.vae import model

        return getattr(model, name)
    raise AttributeError(name)
