"""The spacetime DiT (a denoiser over NaViT-packed video tokens) and the packing of samples into
one token sequence."""
