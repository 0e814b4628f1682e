"""`spacetime train`: the DiT training loop under DeepSpeed ZeRO (a loop you can read).

One entry function, `train(...)`, runs under torchrun, the deepspeed launcher, Ray Train, or as a
plain process (a world of one). `Trainer.run` is the loop: load a step's data, take the step,
report, save. Randomness is derived from (seed, epoch, step, micro-batch), never from a running
generator, so a resumed run draws exactly the noise and timesteps the uninterrupted run would have,
on any world size.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file

from infra.config import to_dict
from infra.errors import JobError
from infra.host_heap import retain_freed_memory
from infra.storage import Storage
from infra.storage_config import StorageConfig
from infra.uris import is_s3, join
from trainer import deepspeed_init, hooks
from trainer.checkpoint import CheckpointStore, check_resume, local_run_dir
from trainer.config import RESUME_FIXED, RunConfig, TrainConfig
from trainer.data.loader import StepData, adopt_latent_space, training_index
from trainer.data.stages import STAGE_EPOCHS, run_loader, stage_entry
from trainer.deadline import Deadline, stop_at_limit
from trainer.diffusion.common import per_sample
from trainer.diffusion.objectives import build_diffusion
from trainer.ema import EMA
from trainer.engine import (
    DistInfo,
    build_mesh,
    build_optimizer,
    dit_deepspeed_config,
    init_distributed,
    lost_peer_message,
    lr_lambda,
    measure_peak_tflops,
    sum_over_ranks,
    use_bf16,
)
from trainer.finetune import load_init, prepare_lora
from trainer.guard import StepGuard, grad_norm_of, guard_optimizer
from trainer.memory import PeakMemory
from trainer.metrics import TrainMetrics
from trainer.model.dit import DiT
from trainer.model.packing import drop_tokens, kept_tokens, pack
from trainer.model.sequence_parallel import SequenceShard, shard_pack
from trainer.preview import preview
from trainer.rng import load_rank_files, microbatch_generator
from trainer.rollback import log_skip, read_windows, rollback
from trainer.saving import Saver
from trainer.stage_config import stages
from trainer.summary import log_start, write_summary
from trainer.validation import Validator
from trainer.watchdog import Watchdog

log = logging.getLogger(__name__)


def build_model(cfg: TrainConfig) -> DiT:
    model = DiT(cfg.model)
    model.grad_checkpointing = cfg.activation_checkpointing
    return model


class Trainer:
    def __init__(self, cfg: TrainConfig, run: RunConfig, storage: Storage, dinfo: DistInfo):
        self.cfg, self.run_cfg, self.storage, self.d = cfg, run, storage, dinfo
        self.seed = run.seed
        self.remote = join(run.output_dir, run.name) if is_s3(run.output_dir) else None
        self.local = local_run_dir(run.output_dir, run.name, run.cache_dir)
        self.ckpt = CheckpointStore(
            self.local / "checkpoints",
            join(self.remote, "checkpoints") if self.remote else None,
            storage,
            dinfo.rank,
            timeout_s=cfg.save_timeout_s,
        )
        self.index = training_index(cfg.data, storage)
        p = cfg.preview
        adopt_latent_space(cfg.model, self.index, (p.vae or cfg.data.vae) if p.every else "")
        self.mesh = build_mesh(dinfo, cfg.parallel.sequence, cfg.model.dims[2])
        # The data plan is per data-parallel rank: a sequence-parallel group shares its batches.
        self.loader = run_loader(
            cfg, self.index, storage, self.mesh.dp_rank, self.mesh.dp, run.seed
        )
        self.diffusion = build_diffusion(cfg.objective, cfg.flow, cfg.ddpm)
        self.bf16 = use_bf16(cfg)
        self.dtype = torch.bfloat16 if self.bf16 else torch.float32
        self.history: list[dict[str, Any]] = []
        self.step = self.epoch = self.step_in_epoch = 0
        self.tokens_seen = self.samples_seen = 0
        self.peak_bytes: int | None = None  # memory of this rank's training steps (PeakMemory)
        self.textless = 0  # micro-batches (all ranks, this run) whose every caption was dropped
        self.guard = StepGuard(cfg.guard, arm_after=cfg.optim.warmup_steps)
        self._pre_norm: float | None = None  # ZeRO-0's gradient norm, taken before its step
        self.last_skip: str | None = None  # why the last step's update was not applied
        self.data_position = (0, 0)  # where the running step's data comes from
        self.validation: list[dict[str, Any]] = []  # held-out results, as the run state keeps them
        self.lora_base: str | None = None  # digest of a LoRA run's frozen base weights
        self.deadline = Deadline(cfg.time_limit_s, cfg.stop_at, time.time(), dinfo.device)

    # -- setup -----------------------------------------------------------------------------------

    def setup(self, resume: str | None) -> None:
        """Builds the model, optimizer and DeepSpeed engine; resumes from a checkpoint if asked."""
        tag = self.ckpt.resume_tag(resume)
        state: dict[str, Any] = {}
        universal = False
        if tag is not None:
            path, state, tag, universal = self.ckpt.prepare_resume(
                tag, self.d.world_size, self.cfg.zero_stage, self.d.local_rank
            )
            check_resume(
                {"train": state["config"], "seed": state["run"]["seed"], "data": state["index"]},
                {"train": to_dict(self.cfg), "seed": self.seed, "data": self.index.fingerprint()},
                RESUME_FIXED,
                str(path),
            )
        if self.cfg.host_heap_retain:
            retain_freed_memory()
        self.memory = PeakMemory(self.d.device)
        self.memory.start()
        torch.manual_seed(self.seed)
        self.model = build_model(self.cfg)
        if self.cfg.lora.rank:  # the base from init on a resume too: checkpoints hold adapters
            self.lora_base = prepare_lora(self.model, self.cfg, self.d.rank, state if tag else None)
        elif self.cfg.init and tag is None:
            load_init(self.model, self.cfg, self.d.rank)
        optimizer = build_optimizer(self.cfg, self.model)
        self.inner_optimizer = optimizer
        guard_optimizer(optimizer, self.guard, self._ds_grad_norm)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(self.cfg))
        self.engine, self.optimizer, _, self.scheduler = deepspeed_init.initialize(
            model=self.model,
            optimizer=optimizer,
            lr_scheduler=scheduler,
            config=dit_deepspeed_config(
                self.cfg, self.d.world_size, self.model.num_params(), load_universal=universal
            ),
        )
        self.ema = (
            EMA(self.engine.module, self.cfg.ema_decay, self.cfg.ema_warmup)
            if self.cfg.ema_decay > 0
            else None
        )
        self.saver = Saver(self, self.cfg.checkpoint_async)
        self.validator = Validator(self) if self.cfg.validation.every else None
        self.guard.add_windows(read_windows(self))
        if tag is not None:
            self._restore(tag, path, state)
        self.peak = self.cfg.peak_tflops or measure_peak_tflops(self.d.device, self.bf16)

    def _restore(self, tag: str, path: Path, state: dict[str, Any], rollback: bool = False) -> None:
        strict = not self.cfg.lora.rank  # a LoRA run's checkpoints hold only its adapters
        loaded = self.engine.load_checkpoint(str(self.ckpt.local), tag, load_module_strict=strict)
        if loaded[0] is None:
            raise JobError(f"{self.ckpt.local / tag}: DeepSpeed could not load the checkpoint")
        self.step, self.epoch, self.step_in_epoch = (
            state["step"],
            state["epoch"],
            state["step_in_epoch"],
        )
        self.tokens_seen, self.samples_seen = state["tokens_seen"], state["samples_seen"]
        if self.ema is not None and (path / "ema.safetensors").exists():
            self.ema.load_full_state(load_file(str(path / "ema.safetensors")))
        self.guard.load_state_dict(state.get("guard", {}), rollback=rollback)
        if not load_rank_files(path, self.d.rank):
            log.info("rank %d: no RNG state in %s (new rank)", self.d.rank, tag)
        self.history = state.get("history", [])
        self.validation = state.get("validation", [])
        if not rollback:
            log.info("resumed from %s at step %d (epoch %d)", tag, self.step, self.epoch)

    # -- the guard -------------------------------------------------------------------------------

    def _ds_grad_norm(self) -> float | None:
        """The step's global gradient norm as DeepSpeed's ZeRO (or bf16) optimizer computed it
        before calling the inner optimizer; without a wrapper (ZeRO-0, fp32), the one taken
        before the step."""
        opt = self.engine.optimizer
        if opt is self.inner_optimizer:
            return self._pre_norm
        n = getattr(opt, "_global_grad_norm", None)
        return None if n is None else float(n)

    # -- one optimizer step ------------------------------------------------------------------------

    def _denoiser(self, shard: SequenceShard | None) -> Any:
        def call(
            x: torch.Tensor, t: torch.Tensor, batch: Any, x0_prev: torch.Tensor | None = None
        ) -> torch.Tensor:
            prev = None if x0_prev is None else x0_prev.to(self.dtype)
            return self.engine(x.to(self.dtype), t.to(self.dtype), batch, shard, prev).float()

        return call

    def train_step(self, data: StepData) -> dict[str, float]:
        """Forward/backward over this rank's micro-batches of the step, then one optimizer step.
        Returns the step's loss, gradient norm, learning rate and counts over all ranks."""
        cfg, mesh = self.cfg, self.mesh
        # DeepSpeed averages gradients over the world; times SP, that is a sum over each SP
        # group's partial gradients (its ranks hold disjoint tokens) and a mean over DP.
        g_total = cfg.data.microbatches_per_step * mesh.sp
        if cfg.loss_averaging == "token":
            norm = sum(kept_tokens(n, cfg.data.token_drop) for n in data.step_lengths)
        else:
            norm = data.global_samples
        loss_sum = torch.zeros((), dtype=torch.float64)
        flops, textless = 0.0, 0
        last = len(data.microbatches) - 1
        # Self-conditioning on half the steps, decided per step: every rank then makes the same
        # number of forward passes (ZeRO-3 gathers parameters in each), and a resume on another
        # world size decides the same (the step's own generator, apart from the micro-batches').
        step_gen = microbatch_generator(self.seed, data.epoch, data.step_in_epoch, -1)
        self_condition = cfg.model.self_condition and bool(torch.rand((), generator=step_gen) < 0.5)
        for i_mb, (samples, mb_id) in enumerate(
            zip(data.microbatches, data.microbatch_ids, strict=True)
        ):
            gen = microbatch_generator(self.seed, data.epoch, data.step_in_epoch, mb_id)
            keep_text = torch.rand(len(samples), generator=gen) >= cfg.data.caption_dropout
            texts = [
                s.text if k else s.text.new_zeros(0, s.text.shape[-1])
                for s, k in zip(samples, keep_text.tolist(), strict=True)
            ]
            # Counted once per SP group: its ranks run the same micro-batches.
            first = mesh.sp_rank == 0
            textless += first and all(len(tx) == 0 for tx in texts)  # cross-attention gets no key
            x0, batch = pack([s.latent for s in samples], texts, cfg.model.patch)
            if cfg.data.token_drop > 0:
                x0, batch, _ = drop_tokens(x0, batch, cfg.data.token_drop, gen)
            x0, batch = x0.to(self.d.device), batch.to(self.d.device)
            shard = shard_pack(batch, mesh.sp_group, mesh.sp, mesh.sp_rank) if mesh.sp > 1 else None
            kw = {"plain": []} if cfg.objective == "flow" and cfg.flow.contrastive else {}
            per_token = self.diffusion.training_loss(
                self._denoiser(shard), x0, batch, generator=gen, self_condition=self_condition, **kw
            )
            part = self._reduce(per_token, batch, shard)
            self.engine.backward(part * (g_total / norm))
            if i_mb < last:  # the last one's step is the optimizer step: after the guard's inputs
                self.engine.step()
            # Reported and judged by the guard: the loss without a contrastive term (flow.py).
            shown = self._reduce(kw["plain"][0], batch, shard) if kw else part
            loss_sum += shown.detach().double().cpu()
            for i in range(len(samples) if first else 0):
                n = int(batch.cu_seqlens[i + 1] - batch.cu_seqlens[i])
                flops += n * self.model.flops_per_token(n, len(texts[i]))
        total = sum_over_ranks([float(loss_sum), flops, textless], self.d.device)
        loss = total[0] / norm
        self.guard.begin(loss, self.step + 1)  # self.step counts the steps before this one
        if self.engine.optimizer is self.inner_optimizer:  # whole gradients, already reduced
            self._pre_norm = grad_norm_of(self.inner_optimizer)
        self.engine.step()
        gn = self.engine.get_global_grad_norm()
        gn = float(gn) if gn is not None else self._pre_norm
        gn = float("nan") if gn is None else gn
        self.last_skip = self.guard.veto or None
        if not self.engine.was_step_applied():  # DeepSpeed dropped it (a non-finite norm)
            self.last_skip = self.last_skip or self.guard.judge(loss, gn) or "DeepSpeed skipped it"
            self.scheduler.step()  # a skipped step moves the schedule, as a vetoed one does
        if self.ema is not None and self.last_skip is None:
            self.ema.update(self.step + 1)  # self.step counts the steps before this one
        return {
            "loss": loss,
            "flops": total[1],
            "textless_microbatches": total[2],
            "grad_norm": gn,
            "lr": float(self.scheduler.get_last_lr()[0]),
            "tokens": float(data.global_tokens),
            "samples": float(data.global_samples),
        }

    def _reduce(self, per_token: torch.Tensor, batch: Any, shard: Any) -> torch.Tensor:
        """A micro-batch's loss sum over its tokens or samples (`train.loss_averaging`)."""
        if shard is not None:  # this rank's tokens only; the group's ranks hold the others
            per_token = per_token * shard.mask(per_token.device)
        if self.cfg.loss_averaging == "token":
            return per_token.sum()
        return per_sample(per_token, batch).sum()

    def _advance(self, data: StepData, s: dict[str, float]) -> None:
        """The run's position and counts after a step (what a checkpoint stores)."""
        self.step += 1
        self.epoch, self.step_in_epoch = data.epoch, data.step_in_epoch + 1
        self.tokens_seen += int(s["tokens"])
        self.samples_seen += int(s["samples"])
        self.textless += int(s["textless_microbatches"])
        entry = {"step": self.step, "loss": s["loss"], "wall": time.time()}
        self.history.append(entry | ({"skipped": self.last_skip} if self.last_skip else {}))

    # -- the loop --------------------------------------------------------------------------------

    def _train_until_rollback(self, dog: Watchdog, metrics: TrainMetrics) -> bool:
        """Trains from the current position to the last step; True when it rolled back (the
        loop starts again from the checkpoint's position)."""
        cfg = self.cfg
        k = stage_entry(cfg, self.step, self.epoch)
        if k is not None:
            self.epoch, self.step_in_epoch = k * STAGE_EPOCHS, 0
            if self.d.rank == 0:
                log.info("stage %d (%s) from step %d", k, stages(cfg)[k].name, self.step + 1)
        for data in self.loader.iterate(self.epoch, self.step_in_epoch):
            self.data_position = (data.epoch, data.step_in_epoch)
            if self.guard.excluded(self.data_position):  # rolled back once: never again
                self.epoch, self.step_in_epoch = data.epoch, data.step_in_epoch + 1
                if self.d.rank == 0:
                    log.info("data position %s skipped (a rolled-back window)", self.data_position)
                continue
            self.saver.poll()
            hooks.active.at("step:begin", self)
            stats = self.train_step(data)
            self.peak_bytes = self.memory.peak()  # read before this step's save, if any
            self._advance(data, stats)
            dog.beat(f"step {self.step}")
            metrics.update(self.step, self.epoch, stats)
            if self.last_skip is not None:
                log_skip(self, stats, data)
            if self.guard.record(
                self.step, self.data_position, stats["loss"], stats["grad_norm"], self.last_skip
            ):
                with dog.allowance(cfg.save_timeout_s, f"rollback at step {self.step}"):
                    rollback(self)
                return True
            if self.validator is not None and self.step % cfg.validation.every == 0:
                with dog.allowance(cfg.dist_timeout_s, f"validation at step {self.step}"):
                    self.validation.append(self.validator.run())
                metrics.scalar("val/loss", self.validation[-1]["loss"], self.step)
                for t, v in self.validation[-1]["per_t"]:
                    metrics.scalar(f"val/loss_t{t:g}", v, self.step)
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                with dog.allowance(cfg.save_timeout_s, f"checkpoint at step {self.step}"):
                    metrics.scalar("checkpoint/blocked_s", self.saver.save(), self.step)
                if cfg.preview.every and self.step % cfg.preview.every == 0:
                    with dog.allowance(cfg.save_timeout_s, f"preview at step {self.step}"):
                        self.saver.wait()  # previews sample the published checkpoint
                        preview(self, metrics)
            if self.step >= cfg.steps:
                break
            if self.deadline.due():
                stop_at_limit(self, dog, metrics)
                break
            if stage_entry(cfg, self.step, self.epoch) is not None:
                return True  # the next stage's plan: iterate again from its first position
        return False

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        start = self.step
        tb = self.local / "tensorboard" if self.d.rank == 0 else None
        metrics = TrainMetrics(
            tb, start, cfg.steps, cfg.log_every, self.peak, self.d.world_size, self.deadline.at
        )
        log_start(self)
        if self.step >= cfg.steps:
            log.info("already at step %d of %d: nothing to train", self.step, cfg.steps)
        else:
            dog = Watchdog(cfg.watchdog_s, self.d.rank, self.d.world_size).start()
            while self._train_until_rollback(dog, metrics):
                pass
            with dog.allowance(cfg.save_timeout_s, "the last checkpoint save"):
                self.saver.wait()
            dog.stop()
        return write_summary(self, start, metrics.close())


def train(
    cfg: TrainConfig, run: RunConfig, storage: StorageConfig, resume: str | None = None
) -> dict[str, Any]:
    """The entry function for every launcher: one rank's share of the run."""
    if not cfg.data.latents and not cfg.data.clips and not cfg.data.sources:
        raise ValueError(
            "train.data.latents is empty: point it at the output of `spacetime encode` (or set "
            "train.data.clips and train.data.vae to encode clip shards on the fly, or "
            "train.data.sources for a weighted mixture)"
        )
    cfg.data.validate()
    dinfo = init_distributed(cfg.dist_timeout_s)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    trainer = Trainer(cfg, run, Storage(storage), dinfo)
    trainer.setup(resume)
    try:
        summary = trainer.run()
    except RuntimeError as e:  # DistBackendError too
        lost = lost_peer_message(e, dinfo.rank, trainer.step)
        if lost is None:
            raise
        raise JobError(lost) from e
    dist.barrier()
    return summary
