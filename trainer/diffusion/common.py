"""What the diffusion objects share: the denoiser's call signature and loss reduction."""

from __future__ import annotations

from typing import Literal, Protocol

import torch

from trainer.model.packing import PackedBatch


class Denoiser(Protocol):
    def __call__(self, tokens: torch.Tensor, t: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        """(N, P) noisy tokens, (B,) timesteps in [0, 1000] -> (N, P) prediction."""
        ...


def per_sample(values: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
    """(N,) per-token values -> (B,) per-sample means."""
    n = batch.num_samples
    idx = batch.sample_idx.long()
    sums = values.new_zeros(n).index_add_(0, idx, values)
    counts = torch.bincount(idx, minlength=n).clamp(min=1).to(values.dtype)
    return sums / counts


def reduce_loss(
    per_token: torch.Tensor, batch: PackedBatch, mode: Literal["token", "sample"]
) -> torch.Tensor:
    """Averaging is an explicit choice: every token weighs the same ("token": long, large clips count
    more), or every sample does ("sample")."""
    if mode == "token":
        return per_token.mean()
    if mode == "sample":
        return per_sample(per_token, batch).mean()
    raise ValueError(f"loss averaging must be 'token' or 'sample', got {mode!r}")
