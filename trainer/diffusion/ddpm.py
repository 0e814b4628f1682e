"""DDPM (Ho et al. 2020) in packed token space: schedules, the closed-form forward process, the
training loss for epsilon- or v-prediction, and the DDPM ancestral and DDIM samplers.

Every sample of a packed batch has its own timestep; per-token quantities are gathered with the
batch's `sample_idx`. Schedules are computed in float64 and gathered into the data's dtype.
"""

from __future__ import annotations

import math

import torch

from trainer.diffusion.common import Denoiser
from trainer.diffusion.config import DDPMConfig
from trainer.model.packing import PackedBatch


def make_betas(cfg: DDPMConfig) -> torch.Tensor:
    """(T,) float64 betas."""
    t = cfg.num_timesteps
    if cfg.schedule == "linear":
        scale = 1000 / t  # keeps the DDPM schedule's shape for T != 1000
        return torch.linspace(scale * cfg.beta_start, scale * cfg.beta_end, t, dtype=torch.float64)
    if cfg.schedule == "scaled_linear":
        return torch.linspace(cfg.beta_start**0.5, cfg.beta_end**0.5, t, dtype=torch.float64) ** 2
    if cfg.schedule == "cosine":
        return cosine_betas(t)
    raise ValueError(f"unknown schedule {cfg.schedule!r}")


def cosine_alpha_bar(u: float, s: float = 0.008) -> float:
    """alpha_bar at fraction u of the way (Nichol & Dhariwal 2021, eq. 17)."""
    return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2


def cosine_betas(t: int, max_beta: float = 0.999) -> torch.Tensor:
    betas = [
        min(1 - cosine_alpha_bar((i + 1) / t) / cosine_alpha_bar(i / t), max_beta) for i in range(t)
    ]
    return torch.tensor(betas, dtype=torch.float64)


class GaussianDiffusion:
    def __init__(self, cfg: DDPMConfig):
        self.cfg = cfg
        self.betas = make_betas(cfg)
        self.alphas_cumprod = torch.cumprod(1 - self.betas, 0)
        self.alphas_cumprod_prev = torch.cat(
            [torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]]
        )
        self.posterior_variance = (
            self.betas * (1 - self.alphas_cumprod_prev) / (1 - self.alphas_cumprod)
        )

    @property
    def num_timesteps(self) -> int:
        return self.cfg.num_timesteps

    def fixed_t(self, n: int) -> torch.Tensor:
        """n equidistant integer steps across the schedule (validation)."""
        return ((torch.arange(n, dtype=torch.float64) + 0.5) * self.num_timesteps / n).long()

    def _gather(
        self, table: torch.Tensor, t: torch.Tensor, batch: PackedBatch, like: torch.Tensor
    ) -> torch.Tensor:
        """Per-sample table values -> (N, 1) per token."""
        per_sample_values = table.to(like.device)[t.long()]
        return per_sample_values[batch.sample_idx.long()].to(like.dtype)[:, None]

    def q_sample(
        self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, batch: PackedBatch
    ) -> torch.Tensor:
        """x_t = sqrt(a_t)·x0 + sqrt(1 - a_t)·eps, closed form (DDPM eq. 4). t: (B,) integer steps."""
        a = self._gather(self.alphas_cumprod, t, batch, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def target(
        self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, batch: PackedBatch
    ) -> torch.Tensor:
        if self.cfg.prediction == "epsilon":
            return noise
        a = self._gather(self.alphas_cumprod, t, batch, x0)
        return a.sqrt() * noise - (1 - a).sqrt() * x0

    def predict_x0_eps(
        self, xt: torch.Tensor, out: torch.Tensor, t: torch.Tensor, batch: PackedBatch
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, eps) implied by a model output at x_t."""
        a = self._gather(self.alphas_cumprod, t, batch, xt)
        if self.cfg.prediction == "epsilon":
            eps = out
            x0 = (xt - (1 - a).sqrt() * eps) / a.sqrt()
        else:
            x0 = a.sqrt() * xt - (1 - a).sqrt() * out
            eps = (1 - a).sqrt() * xt + a.sqrt() * out
        return x0, eps

    def training_loss(
        self,
        model: Denoiser,
        x0: torch.Tensor,
        batch: PackedBatch,
        generator: torch.Generator | None = None,
        t: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(N,) per-token MSE for uniformly drawn steps, one per sample; `t`: (B,) fixed integer
        steps instead (validation)."""
        if t is None:
            t = torch.randint(
                0, self.num_timesteps, (batch.num_samples,), generator=generator, device="cpu"
            )
        t = t.long().to(x0.device)
        noise = torch.randn(x0.shape, generator=generator, device="cpu", dtype=x0.dtype).to(
            x0.device
        )
        xt = self.q_sample(x0, t, noise, batch)
        out = model(xt, t.to(x0.dtype), batch)
        return (out - self.target(x0, noise, t, batch)).pow(2).mean(-1)

    @torch.no_grad()
    def sample(
        self,
        model: Denoiser,
        noise: torch.Tensor,
        batch: PackedBatch,
        steps: int | None = None,
        eta: float = 1.0,
        generator: torch.Generator | None = None,
        known: tuple[torch.Tensor, torch.Tensor] | None = None,
        start_x0: tuple[torch.Tensor, float] | None = None,
    ) -> torch.Tensor:
        """DDIM over `steps` evenly spaced steps (eta=1 with all T steps is DDPM ancestral sampling,
        eta=0 is deterministic DDIM). `known` = (x0 tokens, (N,) bool mask) keeps those tokens fixed
        (conditioning frames); `start_x0` = (x0, strength) starts from x0 noised to that strength
        (SDEdit)."""
        steps = steps or self.num_timesteps
        ts = torch.linspace(self.num_timesteps - 1, 0, steps).round().long().unique_consecutive()
        x = noise
        if start_x0 is not None:
            x0_start, strength = start_x0
            first = round(strength * (self.num_timesteps - 1))
            ts = ts[ts <= first]
            tt = torch.full((batch.num_samples,), int(ts[0]), dtype=torch.long)
            x = self.q_sample(x0_start, tt, noise, batch)
        for i, t_now in enumerate(ts.tolist()):
            t = torch.full((batch.num_samples,), t_now, dtype=torch.long)
            if known is not None:
                x = torch.where(known[1][:, None], self.q_sample(known[0], t, noise, batch), x)
            out = model(x, t.to(x.dtype).to(x.device), batch)
            x0, eps = self.predict_x0_eps(x, out, t, batch)
            t_prev = int(ts[i + 1]) if i + 1 < len(ts) else -1
            a = self._gather(self.alphas_cumprod, t, batch, x)
            a_prev = (
                torch.ones_like(a)
                if t_prev < 0
                else self._gather(self.alphas_cumprod, torch.full_like(t, t_prev), batch, x)
            )
            sigma = eta * ((1 - a_prev) / (1 - a)).sqrt() * (1 - a / a_prev).sqrt()
            z = (
                torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
                if eta > 0
                else 0.0
            )
            x = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).clamp(min=0).sqrt() * eps + sigma * z
        if known is not None:
            x = torch.where(known[1][:, None], known[0], x)
        return x


__all__ = ["DDPMConfig", "GaussianDiffusion", "cosine_alpha_bar", "make_betas"]
