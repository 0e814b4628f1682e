"""The spacetime VAE. Configs import light; the model (torch) loads on first use."""

from trainer.lazy import lazy_getattr
from trainer.vae.config import EncodeConfig, VAEConfig, VAETrainConfig

_LAZY = {"CausalVAE": "trainer.vae.model", "Posterior": "trainer.vae.model"}

__all__ = ["EncodeConfig", "VAEConfig", "VAETrainConfig", *_LAZY]

__getattr__ = lazy_getattr(_LAZY)
