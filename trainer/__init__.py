"""The trainer stage: the spacetime DiT and VAE (models, diffusion objectives, text encoders), the
data plan and loader over latent or clip shards, the DeepSpeed training loops, checkpoints, encoding
and sampling."""
