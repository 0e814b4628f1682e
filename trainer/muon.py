"""Muon on the transformer blocks' matrices, AdamW on everything else (Jordan et al. 2024;
Moonlight, Liu et al. 2025): the update of each hidden weight matrix is orthogonalised, so every
direction of it moves at the same rate instead of the few that dominate the gradient.

Muon takes 2-D parameters only; this pairs it with AdamW for the embeddings, norms, biases and
output head in one optimizer object, so the trainer's LR schedule, step guard and
checkpoints see a single optimizer. The two share the param-group dicts, so the schedule's
learning rate reaches both.

The Muon half is written here rather than taken from torch.optim.Muon: torch's orthogonalises
every update in bfloat16, which a CPU without native bf16 matmuls (AVX512-BF16 or AMX) runs
several times slower than float32. On the demo's 4-block DiT that was a third of a training
step on such a CPU (BENCHMARKS.md, issue 20 round 19). Here the Newton-Schulz iteration runs in
bf16 on CUDA, as torch's does, and in fp32 elsewhere; the algorithm, its constants, the state's
keys and the param groups' keys are torch's, so checkpoints written with torch's Muon load."""

from __future__ import annotations

import math
from typing import Any

import torch

# Keller Jordan's quintic Newton-Schulz coefficients and step count (torch.optim.Muon's defaults).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
NS_EPS = 1e-7  # the floor of the norm the update is divided by


def orthogonalize(
    update: torch.Tensor,
    steps: int = NS_STEPS,
    eps: float = NS_EPS,
    coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
) -> torch.Tensor:
    """U S' V^T for update = U S V^T, S' ~ 1 (0.5-1.5: the iteration trades exactness for steps),
    computed in bf16 on CUDA and fp32 elsewhere; returned in the update's dtype."""
    a, b, c = coefficients
    dtype = torch.bfloat16 if update.is_cuda else torch.float32
    x = update.to(dtype)
    tall = x.size(0) > x.size(1)
    if tall:  # the Gram matrix on the short side is the cheap one
        x = x.T
    x = x / x.norm().clamp(min=eps)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return (x.T if tall else x).to(update.dtype)


class Muon(torch.optim.Optimizer):
    """Nesterov momentum, orthogonalised, at AdamW's update size (Moonlight's 0.2 * sqrt(max
    side) x lr), with decoupled weight decay: torch.optim.Muon's step with adjust_lr_fn=
    "match_rms_adamw", but the orthogonalisation's dtype chosen by device (`orthogonalize`)."""

    def __init__(
        self, params: Any, lr: float, weight_decay: float, momentum: float, nesterov: bool = True
    ):
        defaults = {
            "lr": lr, "weight_decay": weight_decay, "momentum": momentum, "nesterov": nesterov,
            "ns_coefficients": NS_COEFFICIENTS, "eps": NS_EPS, "ns_steps": NS_STEPS,
            "adjust_lr_fn": "match_rms_adamw",
        }  # fmt: skip
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = None if closure is None else closure()
        for group in self.param_groups:
            lr, m = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.ndim != 2:
                    raise ValueError(f"Muon takes 2-D matrices only, got shape {tuple(p.shape)}")
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p.grad))
                buf.lerp_(p.grad, 1 - m)
                update = p.grad.lerp(buf, m) if group["nesterov"] else buf
                update = orthogonalize(
                    update, group["ns_steps"], group["eps"], group["ns_coefficients"]
                )
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update, alpha=-lr * 0.2 * math.sqrt(max(p.shape)))
        return loss


def muon_params(
    model: torch.nn.Module,
) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """(Muon's, AdamW's): the blocks' 2-D weights, and the rest (embeddings and the output layers
    map to and from the data, where an orthogonal update has no meaning)."""
    muon, adam = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (muon if name.startswith("blocks.") and p.ndim == 2 else adam).append(p)
    return muon, adam


class MuonAdamW(torch.optim.Optimizer):
    def __init__(
        self,
        model: torch.nn.Module,
        lr: float,
        betas: tuple[float, float],
        eps: float,
        weight_decay: float,
        momentum: float,
    ):
        muon, adam = muon_params(model)
        super().__init__([{"params": muon}, {"params": adam}], {"lr": lr})
        # AdamW-matched update RMS (0.2 * sqrt(max(rows, cols)) x lr): one lr serves both halves.
        self.muon = Muon(
            [self.param_groups[0]], lr=lr, weight_decay=weight_decay, momentum=momentum
        )
        self.adam = torch.optim.AdamW(
            [self.param_groups[1]], lr=lr, betas=betas, eps=eps, weight_decay=weight_decay
        )

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = None if closure is None else closure()
        self.muon.step()
        self.adam.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {"muon": self.muon.state_dict(), "adam": self.adam.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.muon.load_state_dict(state_dict["muon"])
        self.adam.load_state_dict(state_dict["adam"])
        # torch's load makes new group dicts: share those, or the schedule's lr stops reaching them.
        self.param_groups = [*self.muon.param_groups, *self.adam.param_groups]
