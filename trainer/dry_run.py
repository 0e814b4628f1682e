"""`spacetime train --dry-run`: what a run would be, without training or allocating weights: the
DeepSpeed config, parameter count, attention backend, precision and the packing of an epoch."""

from __future__ import annotations

from typing import Any

import torch

from infra.storage import Storage
from kernels.attention import resolve_backend
from trainer.config import TrainConfig
from trainer.data.loader import build_loader, training_index
from trainer.data.plan import tokens_of
from trainer.engine import dit_deepspeed_config, use_bf16
from trainer.model.dit import DiT


def dry_run(cfg: TrainConfig, seed: int, storage: Storage, world_size: int) -> dict[str, Any]:
    """The report; the model is built on the meta device (no memory for weights)."""
    sp, heads = cfg.parallel.sequence, cfg.model.dims[2]
    if world_size % sp or heads % sp:
        raise ValueError(
            f"parallel.sequence ({sp}) must divide the world size ({world_size}) and the model's "
            f"{heads} attention heads"
        )
    with torch.device("meta"):
        model = DiT(cfg.model)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if use_bf16(cfg) else torch.float32
    out: dict[str, Any] = {
        "deepspeed": dit_deepspeed_config(cfg, world_size, model.num_params()),
        "parameters": model.num_params(),
        "model": f"DiT-{cfg.model.size} {cfg.model.dims} patch {cfg.model.patch}",
        "attention_backend": str(resolve_backend(cfg.model.attn_backend, device, dtype)),
        "precision": "bf16" if use_bf16(cfg) else "fp32",
        "mesh": {
            "world": world_size,
            "data_parallel": world_size // sp,
            "sequence_parallel": sp,
            "sp_groups": [list(range(g * sp, (g + 1) * sp)) for g in range(world_size // sp)],
            "tokens_per_rank_per_microbatch": -(-cfg.data.token_budget // sp),
            "heads_per_rank": heads // sp,
        },
    }
    if cfg.data.latents or cfg.data.clips:
        index = training_index(cfg.data, storage)
        lengths = [tokens_of(e.shape, cfg.model.patch) for e in index.entries]
        plan = build_loader(cfg, index, storage, 0, world_size, seed, encode=False).plan(0)
        slots = len(plan.steps) * cfg.data.microbatches_per_step * cfg.data.token_budget
        used = sum(plan.step_tokens(s, lengths) for s in range(len(plan.steps)))
        out["packing"] = {
            "samples": len(index.entries),
            "shards": len(index.shards),
            "tokens_per_sample": [min(lengths), max(lengths)],
            "steps_per_epoch": len(plan.steps),
            "budget_fill": round(used / max(1, slots), 4),
            "dropped_samples_per_epoch": plan.dropped_samples,
        }
    return out
