"""Training data: the plan (which samples form which micro-batch, step and rank), the packer, and
the loader of latent shards or of clip shards encoded on the fly."""
