"""Exponential moving average of the weights, in fp32, that works under every ZeRO stage.

Each rank keeps the EMA of the parameter data it holds: the full tensors under ZeRO 0-2, its own
partition (`ds_tensor`) under ZeRO-3, so the EMA costs no communication per step. Saving gathers
full tensors (one all_gather per parameter under ZeRO-3) and loading slices this rank's partition
back out, so an EMA saved at one world size loads at another.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def _is_partitioned(p: nn.Parameter) -> bool:
    return hasattr(p, "ds_tensor")


def _local(p: nn.Parameter) -> torch.Tensor:
    return p.ds_tensor if _is_partitioned(p) else p.data  # type: ignore[attr-defined]


class EMA:
    def __init__(self, model: nn.Module, decay: float, warmup: bool = False):
        self.decay, self.warmup = decay, warmup
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.params = dict(model.named_parameters())
        self.shadow = {n: _local(self.params[n]).detach().float().clone() for n in self.names}

    def decay_at(self, step: int) -> float:
        """The decay of the update after optimizer step `step` (1-based). With warm-up it starts
        at 0.18 and rises as (1 + step) / (10 + step) to `decay`, so the average never holds
        more than ~a tenth of the run so far: a fixed 0.99 from step 1 keeps the random
        initialisation in the average for ~100 steps, a fifth of a short run."""
        return min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, step: int) -> None:
        w = 1 - self.decay_at(step)
        for n in self.names:
            self.shadow[n].lerp_(_local(self.params[n]).float(), w)

    @torch.no_grad()
    def full_state(self) -> dict[str, torch.Tensor]:
        """Full fp32 tensors by parameter name (collective under ZeRO-3: call on every rank)."""
        out = {}
        for n in self.names:
            p = self.params[n]
            if _is_partitioned(p):
                parts = [torch.empty_like(self.shadow[n]) for _ in range(dist.get_world_size())]
                dist.all_gather(parts, self.shadow[n])
                full = torch.cat(parts)[: p.ds_numel].view(p.ds_shape)  # type: ignore[attr-defined]
            else:
                full = self.shadow[n]
            out[n] = full.clone()
        return out

    @torch.no_grad()
    def load_full_state(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.names) - set(state)
        if missing:
            raise KeyError(f"EMA state lacks {len(missing)} parameters, e.g. {sorted(missing)[0]}")
        for n in self.names:
            p, full = self.params[n], state[n].float()
            if _is_partitioned(p):
                part = self.shadow[n].numel()
                flat = full.flatten()
                flat = torch.cat(
                    [flat, flat.new_zeros(part * dist.get_world_size() - flat.numel())]
                )
                r = dist.get_rank()
                self.shadow[n].copy_(flat[r * part : (r + 1) * part].view_as(self.shadow[n]))
            else:
                self.shadow[n].copy_(full.view_as(self.shadow[n]))
