"""`spacetime train --dry-run`: what a run would be, without training or allocating weights: the
DeepSpeed config, parameter count, attention backend, precision, the packing of an epoch, and the
memory per rank with the step time it predicts (trainer.memory)."""

from __future__ import annotations

from typing import Any

import torch

from infra.storage import Storage
from kernels.attention import resolve_backend
from trainer.config import TrainConfig
from trainer.data.loader import adopt_latent_space, build_loader, training_index
from trainer.data.mixture import shares
from trainer.data.plan import tokens_of
from trainer.data.stages import run_loader
from trainer.engine import dit_deepspeed_config, use_bf16
from trainer.memory import GIB, estimate
from trainer.model.dit import DiT
from trainer.vae.pretrained import vae_info


def dry_run(cfg: TrainConfig, seed: int, storage: Storage, world_size: int) -> dict[str, Any]:
    """The report; the model is built on the meta device (no memory for weights)."""
    sp, heads = cfg.parallel.sequence, cfg.model.dims[2]
    if world_size % sp or heads % sp:
        raise ValueError(
            f"parallel.sequence ({sp}) must divide the world size ({world_size}) and the model's "
            f"{heads} attention heads"
        )
    index = (
        training_index(cfg.data, storage)
        if cfg.data.latents or cfg.data.clips or cfg.data.sources
        else None
    )
    if index is not None:
        adopt_latent_space(cfg.model, index)
    elif cfg.model.in_channels == 0:  # no data to take them from: the VAE's, else spacetime's 4
        cfg.model.in_channels = vae_info(cfg.data.vae).latent_channels if cfg.data.vae else 4
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
    text_per_pack, seq_len = cfg.data.text_max_length, cfg.data.token_budget
    if index is not None:
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
        if index.source_of is not None:
            draws = shares(index.weights, len(index.entries))
            out["packing"]["mixture"] = [
                {
                    "name": name,
                    "weight": w,
                    "samples": index.source_of.count(s),
                    "drawn_per_epoch": draws[s],
                }
                for s, (name, w) in enumerate(zip(index.names, index.weights, strict=True))
            ]
        per_pack = cfg.data.token_budget / (sum(lengths) / len(lengths))
        text_per_pack = round(per_pack * sum(e.text_len for e in index.entries) / len(lengths))
        seq_len = round(sum(lengths) / len(lengths))
    if cfg.stages and index is not None:
        out["stages"] = stage_table(cfg, storage, world_size, seed, index)
    out["memory"] = memory_report(cfg, world_size, model, text_per_pack, seq_len)
    return out


def memory_report(
    cfg: TrainConfig, world: int, model: DiT, text_per_pack: int, seq_len: int
) -> dict[str, Any]:
    """Bytes per rank (trainer.memory) in GiB, whether they fit `parallel.device_memory_gb`, and the
    step time at `parallel.assumed_mfu` of `peak_tflops` (`seq_len`: a sample's mean length, for
    attention's FLOPs)."""
    bf16 = use_bf16(cfg)
    ds = dit_deepspeed_config(cfg, world, model.num_params())["zero_optimization"]
    bucket = ds.get("reduce_bucket_size", 0)
    est = estimate(cfg, world, model.num_params(), bucket, bf16, text_per_pack)
    gib = {
        k: round(v / GIB, 3)
        for k, v in est.items()
        if isinstance(v, int) and k != "tokens_per_rank"
    }
    cap = cfg.parallel.device_memory_gb
    report: dict[str, Any] = {
        "per_rank_gib": gib,
        "fits": f"{'yes' if est['device_total'] <= cap * 1e9 else 'NO'}: "
        f"{est['device_total'] / 1e9:.1f} of {cap:g} GB per device",
        "peak_in": est["peak_phase"],
        "text_tokens_per_pack": text_per_pack,
    }
    if cfg.peak_tflops:
        tokens = cfg.data.token_budget * cfg.data.microbatches_per_step
        flops = tokens * model.flops_per_token(seq_len, text_per_pack)
        per_rank = flops / world / (cfg.peak_tflops * 1e12 * cfg.parallel.assumed_mfu)
        report["step_time_s"] = round(per_rank, 3)
        report["step_time_at"] = (
            f"{cfg.parallel.assumed_mfu:.0%} MFU of {cfg.peak_tflops:g} TFLOP/s"
        )
    return report


def stage_table(
    cfg: TrainConfig, storage: Storage, world: int, seed: int, index: Any
) -> list[dict[str, Any]]:
    """Each stage's settings and what its plan holds (samples kept and skipped by its limits)."""
    staged = run_loader(cfg, index, storage, 0, world, seed, encode=False)
    rows = []
    for st in staged.stages:
        plan = staged.loader(st.number).plan(0)
        idx = staged.loader(st.number).index
        rows.append(
            {
                "stage": st.number,
                "name": st.name,
                "from_step": st.start + 1,
                "data": st.data.latents or [s.name or s.latents for s in st.data.sources],
                "token_budget": st.data.token_budget,
                "max_latent_frames": st.max_latent_frames or None,
                "max_latent_pixels": st.max_latent_pixels or None,
                "peak_lr": st.lr,
                "samples": len(idx.entries),
                "skipped_by_limits": staged.skipped[st.number],
                "steps_per_epoch": len(plan.steps),
            }
        )
    return rows
