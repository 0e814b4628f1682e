"""Checkpoint saves of the training loop: synchronous, or asynchronous (`train.checkpoint_async`).

A save has two halves. The snapshot is collective and happens in the loop: a fresh
`step-N.partial-<id>/` is agreed on, DeepSpeed's state dicts, the EMA (gathered under ZeRO-3), each
rank's RNG state and the trainer state are taken. The rest is writing those files, waiting for
every rank, publishing (rename, upload to S3, `latest` last) and pruning old checkpoints.

Synchronously, DeepSpeed writes its files itself and the loop does the rest before the next step.
Asynchronously, DeepSpeed's checkpoint engine is swapped for one that copies each state dict to
host memory (pinned on GPU) instead of writing it, and a background thread writes the copies and
publishes; the loop goes on training. The thread's collectives use the checkpoint store's own gloo
group (never the training group, which the loop keeps using). At most one save is in flight: the
next one, a rollback, a preview and the end of the run wait for it first (and say how long). The
publish order is the same either way, so a kill at any moment leaves `latest` on a whole checkpoint.

DeepSpeed's own `DecoupledCheckpointEngine` writes in a helper process but leaves the
publishing (and S3) to us, which is the part that takes time; hence a thread of ours.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from deepspeed.runtime.checkpoint_engine.checkpoint_engine import CheckpointEngine
from safetensors.torch import save_file

from infra.config import to_dict
from trainer import hooks
from trainer.checkpoint import CheckpointStore, code_version, tag_for, write_state
from trainer.rng import rank_state, write_rank_state

log = logging.getLogger("trainer.train")


class HostBuffers:
    """Host memory the snapshots copy into, kept from one save to the next: copying into pages
    already touched is ~4-8x faster than cloning into fresh ones (the kernel zeroes every new
    page first), and on a GPU pinned memory is slow to allocate. The cost is one host copy of
    the saved state, held for the whole run. Buffers of a save return to the pool once its files
    are written; at most one save is in flight, so steady state allocates nothing."""

    def __init__(self) -> None:
        self.free: dict[tuple[Any, ...], list[torch.Tensor]] = {}
        self.used: list[torch.Tensor] = []

    def copy(self, t: torch.Tensor) -> torch.Tensor:
        key = (tuple(t.shape), t.dtype)
        pool = self.free.get(key)
        if pool:
            buf = pool.pop()
        else:
            buf = torch.empty(t.shape, dtype=t.dtype, pin_memory=t.device.type == "cuda")
        self.used.append(buf)
        return buf.copy_(t, non_blocking=t.device.type == "cuda")

    def release(self) -> None:
        for buf in self.used:
            self.free.setdefault((tuple(buf.shape), buf.dtype), []).append(buf)
        self.used = []


def snapshot(obj: Any, buffers: HostBuffers, memo: dict[int, Any] | None = None) -> Any:
    """A copy of a state structure whose tensors live in host memory and no longer change with
    training: dicts, lists and tuples are rebuilt, tensors copied (from a GPU into pinned memory;
    the caller synchronises), anything else kept (DeepSpeed stores strings, numbers, configs).
    A tensor met twice is copied once."""
    memo = {} if memo is None else memo
    if isinstance(obj, torch.Tensor):
        if id(obj) not in memo:
            memo[id(obj)] = buffers.copy(obj.detach())
        return memo[id(obj)]
    if isinstance(obj, dict):
        return type(obj)((k, snapshot(v, buffers, memo)) for k, v in obj.items())
    # Exact types only: a subclass such as torch.Size must stay what it is (DeepSpeed's
    # consolidation calls .numel() on the shapes it saved).
    if type(obj) is list:
        return [snapshot(v, buffers, memo) for v in obj]
    if type(obj) is tuple:
        return tuple(snapshot(v, buffers, memo) for v in obj)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a namedtuple
        return type(obj)(*(snapshot(v, buffers, memo) for v in obj))
    return obj


class _CaptureEngine(CheckpointEngine):
    """Stands in for DeepSpeed's checkpoint engine during an asynchronous save's snapshot: every
    `save(state_dict, path)` is copied to host memory and kept, to be written by the real engine
    (same serialisation) in the background."""

    def __init__(self, real: CheckpointEngine, buffers: HostBuffers):
        super().__init__()
        self.name, self.real, self.buffers = "spacetime-capture", real, buffers
        self.files: list[tuple[str, Any]] = []

    def create(self, info: Any) -> None:
        pass

    def save(self, state_dict: Any, path: str) -> None:
        self.files.append((path, snapshot(state_dict, self.buffers)))

    def load(self, path: str, map_location: Any = None) -> Any:
        return self.real.load(path, map_location=map_location)

    def commit(self, info: Any) -> bool:
        return True

    def preserves_storage_sharing(self) -> bool:
        return False  # the snapshot's copies are compact already; DeepSpeed need not clone first


@dataclass
class _Pending:
    tag: str
    step: int
    path: Path
    files: list[tuple[str, Any]]  # DeepSpeed's (async only: sync saves wrote them already)
    real: CheckpointEngine | None
    rng: tuple[dict[str, torch.Tensor], dict[str, str]]
    ema: dict[str, torch.Tensor] | None
    state: dict[str, Any] | None  # rank 0's trainer_state.json
    t0: float


def run_state(tr: Any) -> dict[str, Any]:
    """What trainer_state.json holds: the position, counts and settings of the run (`tr`: a
    trainer.train.Trainer)."""
    return {
        "step": tr.step,
        "epoch": tr.epoch,
        "step_in_epoch": tr.step_in_epoch,
        "tokens_seen": tr.tokens_seen,
        "samples_seen": tr.samples_seen,
        "world_size": tr.d.world_size,
        "zero_stage": tr.cfg.zero_stage,
        "index": tr.index.fingerprint(),
        "code_version": code_version(),
        "config": to_dict(tr.cfg),
        "run": to_dict(tr.run_cfg),
        "history": list(tr.history),
        "guard": tr.guard.state_dict(),
        "validation": list(tr.validation),
        "lora_base": {"digest": tr.lora_base, "init": tr.cfg.init} if tr.lora_base else None,
    }


class _StepView:
    """The trainer as hooks see it during a save: its step is the saved one, even when the loop
    has moved on (asynchronous saves)."""

    def __init__(self, trainer: Any, step: int):
        self._t, self.step = trainer, step

    def __getattr__(self, name: str) -> Any:
        return getattr(self._t, name)


class Saver:
    def __init__(self, tr: Any, asynchronous: bool):
        """`tr`: the trainer (its engine, EMA, store, ranks, position and counts)."""
        self.tr, self.asynchronous = tr, asynchronous
        self.ckpt: CheckpointStore = tr.ckpt
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._pending_step = 0
        self.buffers = HostBuffers()
        self.blocked_s: list[float] = []  # per save: how long the loop stood still

    # -- the loop's side -------------------------------------------------------------------------

    def save(self) -> float:
        """Saves the trainer's current step; returns the seconds the loop was blocked (waiting
        for the previous save included)."""
        try:
            return self._save()
        except RuntimeError as e:
            self._explain(self.tr.step, e)
            raise

    def _explain(self, step: int, e: BaseException) -> None:
        """A save's collectives are bounded by train.dist_timeout_s, not the watchdog (the save's
        allowance is train.save_timeout_s, for the upload): when a peer freezes or dies inside
        one, gloo/NCCL raise a bare timeout; this names what was happening before the run ends."""
        log.critical(
            "rank %d: checkpoint save at step %d failed (%s); a peer is probably frozen or "
            "gone. The previous checkpoint is intact: relaunch with --resume auto.",
            self.tr.d.rank,
            step,
            str(e).splitlines()[0][-200:] if str(e) else type(e).__name__,
        )

    def _save(self) -> float:
        tr = self.tr
        t0 = time.monotonic()
        waited = self.wait()
        step = tr.step
        view = _StepView(tr, step)
        hooks.active.at("save:begin", view)
        tag = tag_for(step)
        capture = (
            _CaptureEngine(tr.engine.checkpoint_engine, self.buffers) if self.asynchronous else None
        )
        if capture is not None:
            real, tr.engine.checkpoint_engine = tr.engine.checkpoint_engine, capture
        try:
            path = self.ckpt.write_engine(
                tr.engine, tag, tr.d.local_rank, adapters_only=bool(tr.cfg.lora.rank)
            )
        finally:
            if capture is not None:
                tr.engine.checkpoint_engine = real
        pending = _Pending(
            tag=tag,
            step=step,
            path=path,
            files=capture.files if capture is not None else [],
            real=capture.real if capture is not None else None,
            rng=rank_state(),
            ema=self._ema_state(),
            state=run_state(tr) if tr.d.rank == 0 else None,
            t0=t0,
        )
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # the pinned copies are complete
        if self.asynchronous:
            self._pending_step = step
            self._thread = threading.Thread(
                target=self._background, args=(pending,), name=f"save-{tag}", daemon=True
            )
            self._thread.start()
        else:
            self._finish(pending)
        blocked = time.monotonic() - t0
        self.blocked_s.append(round(blocked, 4))
        if tr.d.rank == 0:
            log.info(
                "checkpoint %s: the loop was blocked %.2fs%s%s",
                tag,
                blocked,
                f" (of which {waited:.2f}s waiting for the previous save)" if waited > 0.01 else "",
                "; writing and publishing in the background" if self.asynchronous else "",
            )
        return blocked

    def _ema_state(self) -> dict[str, torch.Tensor] | None:
        """The EMA's full tensors (fresh copies already; moved to host memory from a GPU)."""
        if self.tr.ema is None:
            return None
        full = self.tr.ema.full_state()
        if any(t.device.type != "cpu" for t in full.values()):
            full = snapshot(full, self.buffers)
        return full

    def wait(self) -> float:
        """Waits for the save in flight, if any; returns the seconds waited. Raises what it
        raised."""
        t0 = time.monotonic()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.poll()
        return time.monotonic() - t0

    def poll(self) -> None:
        """Raises (in the loop) an error of the background save, once it has ended."""
        if self._error is not None and (self._thread is None or not self._thread.is_alive()):
            e, self._error = self._error, None
            self._explain(self._pending_step, e)
            raise e

    # -- writing and publishing ------------------------------------------------------------------

    def _background(self, p: _Pending) -> None:
        try:
            self._finish(p)
        except BaseException as e:  # re-raised in the loop by poll/wait
            self._error = e

    def _finish(self, p: _Pending) -> None:
        tr = self.tr
        view = _StepView(tr, p.step)
        for path, sd in p.files:
            assert p.real is not None
            p.real.save(sd, path)
        self.buffers.release()  # written: the next snapshot may reuse them
        write_rank_state(p.path, tr.d.rank, p.rng)
        if tr.d.rank == 0:
            if p.ema is not None:
                save_file(p.ema, str(p.path / "ema.safetensors"))
            assert p.state is not None
            write_state(p.path, p.state)
        hooks.active.at("save:written", view)
        self.ckpt.publish(p.path, tr.cfg.keep_checkpoints, tr.d.local_rank)
        hooks.active.at("save:published", view)
        if tr.d.rank == 0:
            log.info(
                "checkpoint %s published (%.2fs after it began)", p.tag, time.monotonic() - p.t0
            )
