"""The step guard: skips a step whose loss or gradient norm is not finite or spikes, and asks for a
rollback when skips cluster.

Every input of a decision (the step's loss, all-reduced before the optimizer step, and the global
gradient norm DeepSpeed computes before it updates anything) is the same number on every rank, so
every rank takes the same decision with no extra collective and the ranks never diverge.

A skipped step changes no weight, optimizer moment or EMA: the veto sits in the inner optimizer's
`step` (DeepSpeed computes the norm, then calls it), or DeepSpeed itself drops the update when the
norm is not finite (ZeRO 1-3). The step still counts (the data position and the learning-rate
schedule move on), so a run with a skip ends at the same step and schedule as one without.

After `max_skips` skips within `skip_window` steps the trainer rolls back to the last checkpoint
and never trains again on the data positions from the first of those skips to the last one (the
"offending window"); the windows are kept in the run state, so a resume skips them too.
"""

from __future__ import annotations

import logging
import math
import statistics
import types
from collections import deque
from typing import Any

import torch

from trainer.config import GuardConfig

log = logging.getLogger(__name__)

Position = tuple[int, int]  # (epoch, step in epoch): where a step's data comes from


def grad_norm_of(optimizer: torch.optim.Optimizer) -> float:
    """The L2 norm of the gradients an optimizer holds (without ZeRO they are whole and the same
    on every rank after DeepSpeed's all-reduce)."""
    sq = [p.grad.detach().float().pow(2).sum() for g in optimizer.param_groups for p in g["params"]
          if p.grad is not None]  # fmt: skip
    return math.sqrt(float(torch.stack(sq).sum())) if sq else 0.0


class StepGuard:
    def __init__(self, cfg: GuardConfig, arm_after: int = 0):
        """`arm_after`: spikes are not judged in steps up to this one (the learning-rate warm-up:
        from a zero-initialised DiT the gradient norm grows tenfold there, healthy; three such
        steps in a row once ended a demo run at step 49), nor are those steps' values kept as
        the reference: the norm keeps growing for a while at the full learning rate, and judged
        against the warm-up's small norms (a median of 0.7) the healthy norms of 9 that followed
        rolled a 1x4x4-patch demo run back until it ended. Judging starts once `min_history`
        steps after the warm-up are in. Non-finite values are always judged."""
        self.cfg = cfg
        self.arm_after = arm_after
        self._arming = False
        self.losses: deque[float] = deque(maxlen=cfg.median_window)
        self.norms: deque[float] = deque(maxlen=cfg.median_window)
        self.skipped: list[dict[str, Any]] = []  # recent skips: step, position, reason
        self.windows: list[tuple[Position, Position]] = []  # data never trained on again
        self.rollbacks = 0
        self._loss: float | None = None
        self.veto: str | None = None  # why the optimizer step of this step was vetoed

    # -- the decision ----------------------------------------------------------------------------

    def begin(self, loss: float, step: int | None = None) -> None:
        """The step's loss (all ranks), before its optimizer step; `step` counts from 1."""
        self._loss, self.veto = loss, None
        self._arming = step is not None and step <= self.arm_after

    def judge(self, loss: float, norm: float) -> str | None:
        """Why a step with this loss and gradient norm must not be applied, or None."""
        if not self.cfg.enabled:
            return None
        if not math.isfinite(loss):
            return f"loss is {loss}"
        if not math.isfinite(norm):
            return f"gradient norm is {norm}"
        k = self.cfg.spike_factor
        if k and not self._arming and len(self.losses) >= self.cfg.min_history:
            for name, v, hist in (("loss", loss, self.losses), ("gradient norm", norm, self.norms)):
                med = statistics.median(hist)
                if v > k * med:
                    return f"{name} {v:.4g} > {k:g} x its running median {med:.4g}"
        return None

    def allow_update(self, norm: float) -> bool:
        """Called from the inner optimizer's step (possibly once per ZeRO-3 sub-group: the first
        call decides for the step)."""
        if self._loss is None:  # not inside a guarded step (e.g. a test driving the engine)
            return True
        if self.veto is None:
            self.veto = self.judge(self._loss, norm) or ""
        return not self.veto

    # -- after the step --------------------------------------------------------------------------

    def record(
        self, step: int, pos: Position, loss: float, norm: float, reason: str | None
    ) -> bool:
        """Books the step (applied when `reason` is None). Returns True when skips have clustered
        enough to roll back."""
        self._loss = None
        if reason is None:
            if self._arming:
                return False
            self.losses.append(loss)
            self.norms.append(norm)
            return False
        self.skipped = [s for s in self.skipped if s["step"] > step - self.cfg.skip_window]
        self.skipped.append({"step": step, "position": list(pos), "reason": reason})
        return len(self.skipped) >= self.cfg.max_skips

    def offending_window(self) -> tuple[Position, Position]:
        """The data positions from the first clustered skip to the last."""
        first, last = self.skipped[0]["position"], self.skipped[-1]["position"]
        return (first[0], first[1]), (last[0], last[1])

    def rolled_back(self, window: tuple[Position, Position]) -> None:
        self.rollbacks += 1
        self.windows.append(window)
        self.skipped = []
        if self.rollbacks > self.cfg.max_rollbacks:
            raise RuntimeError(
                f"{self.rollbacks} rollbacks in this run (train.guard.max_rollbacks "
                f"{self.cfg.max_rollbacks}): the loss keeps spiking; look at the data windows "
                f"{self.windows} or lower the learning rate"
            )

    def excluded(self, pos: Position) -> bool:
        return any(a <= pos <= b for a, b in self.windows)

    # -- run state -------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "losses": list(self.losses),
            "norms": list(self.norms),
            "skipped": self.skipped,
            "windows": [[list(a), list(b)] for a, b in self.windows],
            "rollbacks": self.rollbacks,
        }

    def load_state_dict(self, s: dict[str, Any], rollback: bool = False) -> None:
        """From a checkpoint's state. A `rollback` keeps the windows and count it knows (the
        older checkpoint it goes back to does not hold them) and starts counting skips afresh."""
        self.losses.clear()
        self.losses.extend(s.get("losses", []))
        self.norms.clear()
        self.norms.extend(s.get("norms", []))
        self.skipped = [] if rollback else list(s.get("skipped", []))
        if not rollback:
            self.rollbacks = int(s.get("rollbacks", 0))
        self.add_windows(s.get("windows", []))

    def add_windows(self, windows: list[Any]) -> None:
        for a, b in windows:
            w = ((int(a[0]), int(a[1])), (int(b[0]), int(b[1])))
            if w not in self.windows:
                self.windows.append(w)


def guard_optimizer(optimizer: torch.optim.Optimizer, guard: StepGuard, norm_source: Any) -> None:
    """Puts the guard in front of `optimizer.step` (on the instance: DeepSpeed's ZeRO optimizers
    and the engine call it by attribute). `norm_source()` gives the step's global gradient norm,
    or None when it must be computed from the optimizer's own (unpartitioned) gradients."""
    inner = optimizer.step

    def step(self: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
        norm = norm_source()
        if norm is None:
            norm = grad_norm_of(self)
        if not guard.allow_update(float(norm)):
            return None
        return inner(*args, **kwargs)

    # A bound method, as torch's LR schedulers expect to find (they wrap it in turn).
    optimizer.step = types.MethodType(step, optimizer)  # type: ignore[method-assign]
