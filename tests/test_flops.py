"""The DiT's FLOP count, which every MFU figure divides by, against torch's own FLOP counter."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from trainer.model.config import DiTConfig
from trainer.model.dit import DiT
from trainer.model.packing import pack


@pytest.mark.parametrize("size", ["tiny", "S"])
def test_flops_per_token_matches_torchs_count_of_a_training_step(size: str) -> None:
    torch.manual_seed(0)
    # The reference attention is plain matmuls, so torch's counter sees attention's FLOPs too.
    cfg = DiTConfig(size=size, in_channels=4, text_dim=48, attn_backend="reference")
    model = DiT(cfg)
    shapes = [(4, 3, 16, 16), (4, 5, 8, 12), (4, 1, 24, 8)]
    texts = [torch.randn(n, 48) for n in (12, 30, 0)]  # one caption dropped
    x0, batch = pack([torch.randn(s) for s in shapes], texts, cfg.patch)
    t = torch.rand(batch.num_samples) * 1000
    with FlopCounterMode(display=False) as counter:
        model(x0, t, batch).pow(2).sum().backward()
    ours = 0.0
    for i, text in enumerate(texts):
        n = int(batch.cu_seqlens[i + 1] - batch.cu_seqlens[i])
        ours += n * model.flops_per_token(n, len(text))
    # Left out on purpose: the per-sample timestep and text embeddings (< 1% here).
    assert ours == pytest.approx(counter.get_total_flops(), rel=0.02)
