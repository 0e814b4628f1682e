"""Fractional positions: what a linear read-out of the position features can tell apart."""

from __future__ import annotations

import torch

from trainer.model.config import DiTConfig
from trainer.model.dit import DiT, frac_feature_dim, fractional_features
from trainer.model.packing import pack


def _track_features(n: int, diagonals: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of the tokens on a rightward track (w = t) and a leftward one (w = n-1-t) of an
    n x 1 x n (t, h, w) latent grid, and their labels (+1 right, -1 left)."""
    latent = torch.zeros(1, n, 1, n)
    _, batch = pack([latent], [torch.zeros(0, 8)], (1, 1, 1))
    feats = fractional_features(batch, diagonals)
    t, w = batch.coords[:, 0], batch.coords[:, 2]
    right, left = w == t, w == n - 1 - t
    keep = right ^ left  # the centre of an odd grid lies on both
    labels = torch.where(right, 1.0, -1.0)
    return feats[keep].double(), labels[keep].double()


def test_diagonal_features_make_a_motions_sign_linear() -> None:
    """On per-axis features every linear read-out is f(t) + g(w), whose sum over the rightward
    track equals its sum over the leftward one: no read-out puts all of one track above all of
    the other. Along the diagonals one can."""
    for diagonals, separable in ((False, False), (True, True)):
        x, y = _track_features(9, diagonals)
        x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
        w = torch.linalg.pinv(x) @ y[:, None]  # least squares, minimum norm
        accuracy = ((x @ w).squeeze(1).sign() == y).double().mean().item()
        assert (accuracy == 1.0) == separable, (diagonals, accuracy)


def test_diagonal_model_builds_and_runs_packed() -> None:
    cfg = DiTConfig(size="tiny", in_channels=4, patch=(1, 2, 2), text_dim=16)
    cfg.frac_pos_diagonals = True
    m = DiT(cfg)
    assert m.pos_embed is not None and m.pos_embed.in_features == frac_feature_dim(cfg) == 108
    tokens, batch = pack(
        [torch.randn(4, 3, 4, 6), torch.randn(4, 1, 2, 2)], [torch.randn(5, 16)] * 2, (1, 2, 2)
    )
    out = m(tokens, torch.tensor([10.0, 900.0]), batch)
    assert out.shape == tokens.shape and torch.isfinite(out).all()
