"""The causal 3D spacetime VAE: model, configs, chunked and tiled encode/decode, and its trainer."""
