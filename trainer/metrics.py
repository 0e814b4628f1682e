"""What a training run reports: loss, gradient norm, learning rate, tokens and samples per second,
MFU and ETA, every `log_every` steps to the log and (rank 0) to TensorBoard."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class TrainMetrics:
    """Accumulates each step's counts; every `log_every` steps (and at the last) writes one line
    and the TensorBoard scalars for the window since the previous line."""

    def __init__(
        self,
        tensorboard: Path | None,
        start_step: int,
        steps: int,
        log_every: int,
        peak_tflops: float,
        world_size: int,
        ends_at: float | None = None,
    ) -> None:
        """`ends_at`: a Unix time the run stops at (train.time_limit_s, train.stop_at); the ETA is
        the time left to it when that comes before the last step."""
        from torch.utils.tensorboard import SummaryWriter  # TensorBoard imports in seconds

        self.writer = (
            SummaryWriter(str(tensorboard), purge_step=start_step) if tensorboard else None
        )
        self.start_step, self.steps, self.log_every = start_step, steps, log_every
        self.ends_at = ends_at
        self.peak_flops = peak_tflops * 1e12 * world_size
        self.t_start = time.monotonic()
        self._reset()

    def _reset(self) -> None:
        self.t_window = time.monotonic()
        self.tokens = self.samples = self.flops = 0.0

    def update(self, step: int, epoch: int, s: dict[str, float]) -> None:
        """`s`: the step's loss, grad_norm, lr, tokens, samples and flops (all ranks)."""
        self.tokens += s["tokens"]
        self.samples += s["samples"]
        self.flops += s["flops"]
        if step % self.log_every and step != self.steps:
            return
        dt = time.monotonic() - self.t_window
        rates = {
            "tokens_per_s": self.tokens / dt,
            "samples_per_s": self.samples / dt,
            "mfu": self.flops / dt / self.peak_flops,
        }
        eta = (time.monotonic() - self.t_start) / (step - self.start_step) * (self.steps - step)
        limit = ""
        left = self.ends_at - time.time() if self.ends_at is not None else eta
        if left < eta:
            eta, limit = max(0.0, left), " (time limit)"
        if self.writer is not None:
            for k in ("loss", "grad_norm", "lr"):
                self.writer.add_scalar(f"train/{k}", s[k], step)
            for k, v in rates.items():
                self.writer.add_scalar(f"train/{k}", v, step)
            log.info(
                "step %d/%d loss %.4f grad %.3f lr %.2e | %.0f tok/s %.1f samples/s MFU %.1f%% | "
                "epoch %d | eta %.0fs%s",
                step,
                self.steps,
                s["loss"],
                s["grad_norm"],
                s["lr"],
                rates["tokens_per_s"],
                rates["samples_per_s"],
                100 * rates["mfu"],
                epoch,
                eta,
                limit,
            )
        self._reset()

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag, value, step)

    def image(self, tag: str, image: Any, step: int) -> None:
        if self.writer is not None:
            self.writer.add_image(tag, image, step, dataformats="HWC")

    def close(self) -> float:
        """Closes TensorBoard; returns the wall time since the start."""
        if self.writer is not None:
            self.writer.close()
        return time.monotonic() - self.t_start
