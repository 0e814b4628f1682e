"""Video frames between their stored form and what a VAE reads: (T, H, W, 3) uint8 in 0-255 and
(3, T, H, W) float in [-1, 1]. One place for the scale, so encoder, decoder, benches and tests
cannot disagree on it (it was written out in ten places)."""

from __future__ import annotations

import numpy as np
import torch


def to_signed(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (3, T, H, W) float32 in [-1, 1]."""
    return torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """(3, T, H, W) about [-1, 1] -> (T, H, W, 3) uint8 (out-of-range values clipped, not
    wrapped as a plain byte cast would)."""
    return ((video.float() + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 3, 0).numpy()
