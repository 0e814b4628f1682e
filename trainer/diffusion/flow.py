"""Rectified flow (Liu et al. 2022; as trained in SD3, Esser et al. 2024) in packed token space.

x_t = (1 - t)·x0 + t·eps for t in [0, 1]; the model predicts the velocity eps - x0, or x0 itself
(`prediction: x0`, EDM-preconditioned) turned into a velocity, so loss and sampler are the same.
Training draws t from a logit-normal distribution, shifted toward noise for samples with more tokens
(resolution-dependent shift: t' = s·t / (1 + (s - 1)·t), s = sqrt(tokens / shift_base_tokens)).
Sampling integrates the ODE from t=1 to 0 with Euler steps on the same shifted grid.
"""

from __future__ import annotations

import itertools

import torch

from trainer.diffusion.common import Denoiser
from trainer.diffusion.config import FlowConfig
from trainer.model.packing import PackedBatch, partner_tokens


def shift_time(t: torch.Tensor, tokens: torch.Tensor, base: int) -> torch.Tensor:
    if base <= 0:
        return t
    s = (tokens.to(t.dtype) / base).sqrt()
    return s * t / (1 + (s - 1) * t)


def foreground_weights(x0: torch.Tensor, batch: PackedBatch, alpha: float) -> torch.Tensor:
    """(N,) 1 + alpha x each token's distance from its sample's background token (the median over
    the sample's tokens, per dimension), scaled by the sample's largest distance."""
    w = torch.ones(x0.shape[0], dtype=x0.dtype, device=x0.device)
    bounds = batch.cu_seqlens.tolist()
    for a, b in itertools.pairwise(bounds):
        tokens = x0[a:b]
        dist = (tokens - tokens.median(0).values).abs().mean(-1)
        top = dist.max() if b > a else dist.new_zeros(())
        if top > 0:
            w[a:b] = 1 + alpha * dist / top
    return w


def per_token(t: torch.Tensor, batch: PackedBatch, like: torch.Tensor) -> torch.Tensor:
    """(B,) per-sample values -> (N, 1) per token, on `like`'s device and dtype."""
    return t.to(like.device, like.dtype)[batch.sample_idx.long()][:, None]


class RectifiedFlow:
    def __init__(self, cfg: FlowConfig):
        self.cfg = cfg

    def _tokens_per_sample(self, batch: PackedBatch) -> torch.Tensor:
        return torch.tensor([g[0] * g[1] * g[2] for g in batch.grids], dtype=torch.float64)

    def fixed_t(self, n: int) -> torch.Tensor:
        """n equidistant times in (0, 1), unshifted: the same grid for every sample (validation)."""
        return (torch.arange(n, dtype=torch.float64) + 0.5) / n

    def sample_t(
        self, batch: PackedBatch, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """(B,) float64 times in (0, 1)."""
        n = batch.num_samples
        if self.cfg.timestep_sampling == "uniform":
            t = torch.rand(n, generator=generator, dtype=torch.float64)
        else:
            z = torch.randn(n, generator=generator, dtype=torch.float64)
            t = torch.sigmoid(self.cfg.logit_mean + self.cfg.logit_std * z)
        return shift_time(t, self._tokens_per_sample(batch), self.cfg.shift_base_tokens)

    def velocity(
        self,
        model: Denoiser,
        xt: torch.Tensor,
        t: torch.Tensor,
        batch: PackedBatch,
        x0_prev: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The model's velocity at (xt, t); t: (B,) float64 in [0, 1]. An x0 model's output F
        means x0 = c_skip·xt + c_out·F, with c_skip = (1-t)σ²/D, c_out = tσ/√D, D = (1-t)²σ² + t²
        (EDM's scalings for x_t = (1-t)·x0 + t·eps); then v = (xt - x0)/t, written without the
        division. At high noise such a model need not carry the noise through its layers to the
        output (a velocity model must: v = eps - x0), so all of it goes to drawing the clean clip,
        which the caption alone decides there. `x0_prev`: a self-conditioning model's previous
        estimate of x0 (given only when there is one: other denoisers take no such argument)."""
        tt = (t * 1000).to(xt.device, xt.dtype)
        out = model(xt, tt, batch) if x0_prev is None else model(xt, tt, batch, x0_prev=x0_prev)
        if self.cfg.prediction == "velocity":
            return out
        s2 = self.cfg.sigma_data**2
        d = (1 - t) ** 2 * s2 + t**2
        ab = torch.stack([(t - (1 - t) * s2) / d, self.cfg.sigma_data / d.sqrt()], dim=-1)
        a, b = ab.to(xt.device, xt.dtype)[batch.sample_idx.long()].unbind(-1)  # per token
        return a[:, None] * xt - b[:, None] * out

    @staticmethod
    def estimate_x0(
        xt: torch.Tensor, v: torch.Tensor, t: torch.Tensor, batch: PackedBatch
    ) -> torch.Tensor:
        """The clean tokens a velocity implies: x0 = x_t - t·v."""
        return xt - per_token(t, batch, xt) * v

    @staticmethod
    def interpolate(
        x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, batch: PackedBatch
    ) -> torch.Tensor:
        tt = per_token(t, batch, x0)
        return (1 - tt) * x0 + tt * noise

    def training_loss(
        self,
        model: Denoiser,
        x0: torch.Tensor,
        batch: PackedBatch,
        generator: torch.Generator | None = None,
        t: torch.Tensor | None = None,
        self_condition: bool = False,
        plain: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """(N,) per-token MSE between predicted and true velocity, less the contrastive term and
        times the foreground weight when training (`train.flow.contrastive`,
        `foreground_weight`); `t`: (B,) fixed times in (0, 1) instead of
        drawn ones (validation: unweighted, comparable across settings). `self_condition`: first
        estimate x0 from the same noisy input without gradient, then predict given that estimate,
        as a self-conditioning sampler's every step after the first does. `plain`: receives the
        loss without the contrastive term (detached), the one to report and to judge spikes by:
        the term can take the objective to 0 or below, where a spike's ratio means nothing."""
        training = t is None
        weighted = training and self.cfg.foreground_weight > 0
        t = self.sample_t(batch, generator) if t is None else t.to(torch.float64)
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        xt = self.interpolate(x0, noise, t, batch)
        x0_prev = None
        if self_condition:
            with torch.no_grad():
                x0_prev = self.estimate_x0(xt, self.velocity(model, xt, t, batch), t, batch)
        target = noise - x0
        v = self.velocity(model, xt, t, batch, x0_prev)
        loss = (v - target).pow(2).mean(-1)
        weights = foreground_weights(x0, batch, self.cfg.foreground_weight) if weighted else None
        if plain is not None:
            plain.append((loss if weights is None else loss * weights).detach())
        if training and self.cfg.contrastive > 0:
            idx, has = partner_tokens(batch)
            away = (v - target[idx]).pow(2).mean(-1)
            loss = loss - self.cfg.contrastive * has.to(loss.dtype) * away
        return loss if weights is None else loss * weights

    @torch.no_grad()
    def sample(
        self,
        model: Denoiser,
        noise: torch.Tensor,
        batch: PackedBatch,
        steps: int = 30,
        known: tuple[torch.Tensor, torch.Tensor] | None = None,
        start_x0: tuple[torch.Tensor, float] | None = None,
        self_condition: bool = False,
    ) -> torch.Tensor:
        """Euler integration from t=1 (or `start_x0`'s strength, SDEdit) to 0. `known` = (x0 tokens,
        (N,) bool mask) holds conditioning tokens on their true path and returns them exactly.
        `self_condition`: give each step after the first the previous step's estimate of x0."""
        grid = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
        tokens = self._tokens_per_sample(batch)
        x = noise
        if start_x0 is not None:
            x0_start, strength = start_x0
            grid = torch.linspace(strength, 0.0, steps + 1, dtype=torch.float64)
        per_sample_grid = torch.stack(
            [shift_time(grid, n.expand_as(grid), self.cfg.shift_base_tokens) for n in tokens]
        )
        if start_x0 is not None:
            x = self.interpolate(x0_start, noise, per_sample_grid[:, 0], batch)
        x0_prev = None
        for i in range(steps):
            t, t_next = per_sample_grid[:, i], per_sample_grid[:, i + 1]
            if known is not None:
                x = torch.where(known[1][:, None], self.interpolate(known[0], noise, t, batch), x)
            v = self.velocity(model, x, t, batch, x0_prev)
            if self_condition:
                x0_prev = self.estimate_x0(x, v, t, batch)
            dt = per_token(t_next - t, batch, x)
            x = x + dt * v
        if known is not None:
            x = torch.where(known[1][:, None], known[0], x)
        return x
