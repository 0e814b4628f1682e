"""The spacetime VAE."""

from trainer.vae.model import CausalVAE, Posterior, VAEConfig

__all__ = ["CausalVAE", "Posterior", "VAEConfig"]
