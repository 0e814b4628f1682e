"""Learning-rate shapes shared by the DiT's and the VAE's trainers."""

from __future__ import annotations

import math


def cosine_decay(progress: float, floor: float) -> float:
    """Half a cosine from 1 at progress 0 to `floor` at progress 1 (a learning-rate factor)."""
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
