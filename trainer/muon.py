"""Muon on the transformer blocks' matrices, AdamW on everything else (Jordan et al. 2024;
Moonlight, Liu et al. 2025): the update of each hidden weight matrix is orthogonalised, so every
direction of it moves at the same rate instead of the few that dominate the gradient.

torch ships Muon but only for 2-D parameters; this pairs it with AdamW for the embeddings, norms,
biases and output head in one optimizer object, so the trainer's LR schedule, step guard and
checkpoints see a single optimizer. The two share the param-group dicts, so the schedule's
learning rate reaches both."""

from __future__ import annotations

from typing import Any

import torch


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
        self.muon = torch.optim.Muon(
            [self.param_groups[0]],
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            adjust_lr_fn="match_rms_adamw",
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
