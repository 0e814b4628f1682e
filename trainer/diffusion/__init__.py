"""Diffusion objectives and samplers (DDPM/DDIM, rectified flow); the model is only a denoiser."""
