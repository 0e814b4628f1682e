"""The trainer's first and last words: the start line and train_summary.json with its one-line
summary (rank 0 writes; every rank takes part in gathering the per-rank memory)."""

from __future__ import annotations

import json
import logging
from typing import Any

import torch.distributed as dist

from infra.uris import join

# `tr` is a trainer.train.Trainer; not imported, even for type checking: that would be a cycle.
Trainer = Any

log = logging.getLogger("trainer.train")


def log_start(tr: Trainer) -> None:
    if tr.d.rank != 0:
        return
    c = tr.cfg
    log.info(
        "train: DiT-%s %.2fM params, ZeRO-%d, %s, world %d (SP %d), %d micro-batches of %d tokens "
        "per step, steps %d -> %d",
        c.model.size,
        tr.model.num_params() / 1e6,
        c.zero_stage,
        "bf16" if tr.bf16 else "fp32",
        tr.d.world_size,
        c.parallel.sequence,
        c.data.microbatches_per_step,
        c.data.token_budget,
        tr.step,
        c.steps,
    )


def write_summary(tr: Trainer, start: int, wall: float) -> dict[str, Any]:
    peaks: list[int | None] = [None] * tr.d.world_size
    dist.all_gather_object(peaks, tr.peak_bytes)
    summary = {
        "steps": tr.step,
        "trained_steps": tr.step - start,
        "final_loss": tr.history[-1]["loss"] if tr.history else None,
        "tokens_seen": tr.tokens_seen,
        "samples_seen": tr.samples_seen,
        "textless_microbatches": tr.textless,
        "world_size": tr.d.world_size,
        "wall_s": round(wall, 2),
        "checkpoint": tr.ckpt.latest(),
        # Per rank, above the level before the model was built, up to the last step (and the
        # saves before it), not its own save (trainer.memory.PeakMemory).
        "peak_memory_bytes": peaks,
        # Seconds the loop stood still for each save of this run (train.checkpoint_async).
        "checkpoint_blocked_s": tr.saver.blocked_s,
        "skipped_steps": [h["step"] for h in tr.history if "skipped" in h],
        "rollbacks": tr.guard.rollbacks,
        "stopped_at_time_limit": tr.deadline.reached,
    }
    if tr.d.rank == 0:
        (tr.local / "train_summary.json").write_text(json.dumps(summary, indent=2))
        if tr.remote:
            tr.storage.upload(
                tr.local / "train_summary.json", join(tr.remote, "train_summary.json")
            )
        peak = max((p for p in peaks if p is not None), default=None)
        log.info(
            "train: %d steps (%d this run) in %.1fs, final loss %s, %d tokens seen, peak memory "
            "%s per rank; latest %s",
            summary["steps"],
            summary["trained_steps"],
            wall,
            summary["final_loss"],
            tr.tokens_seen,
            "n/a" if peak is None else f"{peak / 2**30:.2f} GiB",
            summary["checkpoint"],
        )
    return summary
