"""The trainer's side of the step guard (trainer/guard.py): logging a skip with the samples it
saw, rolling back to the last checkpoint, and the run-level record of the data windows never to be
trained on again."""

from __future__ import annotations

import json
import logging
from typing import Any

import torch.distributed as dist

from infra.errors import JobError
from infra.uris import join
from trainer import hooks
from trainer.data.loader import StepData

# `tr` is a trainer.train.Trainer; not imported, even for type checking: that would be a cycle.
Trainer = Any

log = logging.getLogger("trainer.train")


def windows_uri(tr: Trainer) -> str:
    """Run-level record of the data windows rolled back: a resume from the checkpoint the
    rollback went to (which predates them) must skip them too."""
    return (
        join(tr.remote, "guard_windows.json") if tr.remote else str(tr.local / "guard_windows.json")
    )


def read_windows(tr: Trainer) -> list[Any]:
    uri = windows_uri(tr)
    return json.loads(tr.storage.read_text(uri)) if tr.storage.exists(uri) else []


def log_skip(tr: Trainer, stats: dict[str, float], data: StepData) -> None:
    keys: list[list[str]] = [[] for _ in range(tr.d.world_size)]
    dist.all_gather_object(keys, [s.key for mb in data.microbatches for s in mb])
    if tr.d.rank == 0:
        every = sorted({k for ks in keys for k in ks})
        log.warning(
            "step %d skipped (%s): loss %.4g, gradient norm %.4g, data position %s; samples: %s",
            tr.step,
            tr.last_skip,
            stats["loss"],
            stats["grad_norm"],
            tr.data_position,
            ", ".join(every[:32]) + (f" (+{len(every) - 32})" if len(every) > 32 else ""),
        )


def rollback(tr: Trainer) -> None:
    """Back to the last published checkpoint, never to train on the offending window again."""
    tr.saver.wait()
    window = tr.guard.offending_window()
    tag = tr.ckpt.latest()
    if tag is None:
        raise JobError(
            f"step {tr.step}: {tr.cfg.guard.max_skips} skipped steps within "
            f"{tr.cfg.guard.skip_window} and no checkpoint to roll back to"
        )
    try:
        tr.guard.rolled_back(window)
    except RuntimeError as e:
        raise JobError(str(e)) from None
    if tr.d.rank == 0:
        windows = [[list(a), list(b)] for a, b in tr.guard.windows]
        tr.storage.write_text(windows_uri(tr), json.dumps(windows))
    path, state, dtag, universal = tr.ckpt.prepare_resume(
        tag, tr.d.world_size, tr.cfg.zero_stage, tr.d.local_rank
    )
    if universal:
        raise JobError(
            f"step {tr.step}: rollback to {tag}, written by another world size, is not "
            "supported in-process; relaunch with --resume auto (the window is recorded)"
        )
    at = tr.step
    tr._restore(dtag, path, state, rollback=True)
    hooks.active.at("rollback", tr)
    if tr.d.rank == 0:
        log.warning(
            "rolled back from step %d to %s (step %d): skips clustered; data positions "
            "%s-%s will not be trained on (rollback %d of at most %d)",
            at,
            tag,
            tr.step,
            window[0],
            window[1],
            tr.guard.rollbacks,
            tr.cfg.guard.max_rollbacks,
        )
