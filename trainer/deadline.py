"""A wall-clock stop: the launch ends at a step boundary before its time runs out, with that step
checkpointed, so a scheduler's time limit (Slurm's --time, the demo's minutes) never kills a run
mid-step and `--resume auto` continues from the last step trained.

Rank 0 alone reads the clock and broadcasts its decision: hosts' clocks differ, and ranks that
decided apart would leave one waiting in a collective the other never enters.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from trainer.metrics import TrainMetrics
    from trainer.watchdog import Watchdog

log = logging.getLogger(__name__)


class Deadline:
    """`limit_s` seconds after `start` or the Unix time `stop_at`, whichever comes first (0: not
    that one). `due()` is called once a step, by every rank at the same step."""

    def __init__(self, limit_s: float, stop_at: float, start: float, device: torch.device):
        if stop_at and stop_at <= start:
            raise ValueError(
                f"train.stop_at ({time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(stop_at))}) "
                "has passed: no step would be trained (set it to 0 or a later time)"
            )
        ends = [t for t in (start + limit_s if limit_s else 0.0, stop_at) if t]
        self.at = min(ends) if ends else None
        self.device = device
        self.last: float | None = None  # when the previous call came: one step ago
        self.reached = False  # due() said so: this launch ends here

    def due(self) -> bool:
        """True on every rank when rank 0 finds that one more step, as long as the last one,
        would end past the deadline."""
        if self.at is None:
            return False
        now = time.time()
        step_s = now - self.last if self.last is not None else 0.0
        self.last = now
        flag = torch.tensor([float(now + step_s >= self.at)], device=self.device)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.broadcast(flag, src=0)  # on the rank's device: NCCL moves no CPU tensor
        self.reached = bool(flag.item())
        return self.reached


def stop_at_limit(tr: Any, dog: Watchdog, metrics: TrainMetrics) -> None:
    """The launch's time is up: trainer `tr`'s last step is checkpointed (unless it just was) and
    the loop ends; the steps left are for `--resume auto`. (`tr` is not typed as the Trainer:
    importing trainer.train here, even for type checking only, is an import cycle.)"""
    if tr.step % tr.cfg.checkpoint_every:
        with dog.allowance(tr.cfg.save_timeout_s, f"checkpoint at step {tr.step}"):
            metrics.scalar("checkpoint/blocked_s", tr.saver.save(), tr.step)
    if tr.d.rank == 0:
        log.info(
            "time limit: stopped at step %d of %d, checkpointed; `--resume auto` continues",
            tr.step,
            tr.cfg.steps,
        )
