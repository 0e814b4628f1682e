"""`spacetime train`: the DiT training loop under DeepSpeed ZeRO (a loop you can read).

One entry function, `train(cfg)`, runs under torchrun, the deepspeed launcher, Ray Train, or as a
plain process (a world of one). Randomness is derived from (seed, epoch, step, micro-batch), never
from a running generator, so a resumed run draws exactly the noise and timesteps the uninterrupted
run would have, on any world size.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from infra.config import to_dict
from infra.errors import JobError
from infra.storage import Storage, is_s3, join
from trainer import hooks
from trainer.checkpoint import (
    CheckpointStore,
    check_resume,
    code_version,
    load_rank_files,
    save_rank_files,
    tag_for,
    write_state,
)
from trainer.config import TrainConfig
from trainer.data.loader import LatentLoader, StepData
from trainer.data.plan import load_index, tokens_of
from trainer.engine import (
    DistInfo,
    build_optimizer,
    deepspeed_config,
    init_distributed,
    lr_lambda,
    measure_peak_tflops,
    use_bf16,
)

log = logging.getLogger(__name__)

# What decides the samples, noise and model of each step: a resume must keep them (the global
# batches do not depend on the world size, so that may change).
RESUME_FIXED = (
    "seed",
    "data",
    "train.model.",
    "train.objective",
    "train.flow.",
    "train.ddpm.",
    "train.loss_averaging",
    "train.data.token_budget",
    "train.data.microbatches_per_step",
    "train.data.shuffle_shards",
    "train.data.caption_dropout",
    "train.data.token_drop",
    "train.data.max_frames",
    "train.data.text_max_length",
)


def run_dir(output_dir: str, name: str) -> str:
    return join(output_dir, name)


def local_run_dir(output_dir: str, name: str, cache_dir: str) -> Path:
    """Local files of the run: the run dir itself, or a folder of the cache for S3 runs."""
    if is_s3(output_dir):
        # A readable name plus a digest of the whole URI: s3://b/a_b and s3://b/a/b must not
        # share a cache folder.
        uri = join(output_dir, name)
        readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", uri.removeprefix("s3://"))[-80:]
        return Path(cache_dir) / "runs" / f"{readable}-{hashlib.sha1(uri.encode()).hexdigest()[:10]}"
    return Path(output_dir) / name


def microbatch_generator(seed: int, epoch: int, step: int, microbatch: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(hash((seed, epoch, step, microbatch)) & (2**63 - 1))
    return g


def kept_tokens(n: int, token_drop: float) -> int:
    return n if token_drop <= 0 else max(1, round(n * (1 - token_drop)))


def build_model(cfg: TrainConfig) -> torch.nn.Module:
    from trainer.model import DiT

    model = DiT(cfg.model)
    model.grad_checkpointing = cfg.activation_checkpointing
    return model


def build_diffusion(cfg: TrainConfig) -> Any:
    from trainer.diffusion import GaussianDiffusion, RectifiedFlow

    return RectifiedFlow(cfg.flow) if cfg.objective == "flow" else GaussianDiffusion(cfg.ddpm)


def _check_model_matches(cfg: TrainConfig, latent_channels: int) -> None:
    if cfg.model.in_channels != latent_channels:
        raise ValueError(
            f"train.model.in_channels is {cfg.model.in_channels} but the latents have "
            f"{latent_channels} channels; set --set train.model.in_channels={latent_channels}"
        )


def dry_run(cfg: TrainConfig, seed: int, storage: Storage, world_size: int) -> dict[str, Any]:
    """The DeepSpeed config, parameter count, attention backend and packing stats; trains nothing
    and allocates no weights (the model is built on the meta device)."""
    from kernels.attention import resolve_backend
    from trainer.model import DiT

    with torch.device("meta"):
        model = DiT(cfg.model)
    out: dict[str, Any] = {
        "deepspeed": deepspeed_config(cfg, world_size, model.num_params()),
        "parameters": model.num_params(),
        "model": f"DiT-{cfg.model.size} {cfg.model.dims} patch {cfg.model.patch}",
        "attention_backend": str(
            resolve_backend(
                cfg.model.attn_backend,
                torch.device("cuda" if torch.cuda.is_available() else "cpu"),
                torch.bfloat16 if use_bf16(cfg) else torch.float32,
            )
        ),
        "precision": "bf16" if use_bf16(cfg) else "fp32",
    }
    if cfg.data.latents or cfg.data.clips:
        index = training_index(cfg, storage)
        lengths = [tokens_of(e.shape, cfg.model.patch) for e in index.entries]
        loader = _loader(cfg, index, storage, 0, world_size, seed, encode=False)
        plan = loader.plan(0)
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


def training_index(cfg: TrainConfig, storage: Storage) -> Any:
    """The plan's index: cached latent shards, or clip shards to encode on the fly."""
    if cfg.data.clips:
        from trainer.data.raw import clip_index
        from trainer.vae import CausalVAE

        vae_cfg = CausalVAE.config_of(cfg.data.vae)
        return clip_index(cfg.data.clips, storage, vae_cfg, cfg.data.max_frames)
    return load_index(cfg.data.latents, storage)


def _loader(
    cfg: TrainConfig,
    index: Any,
    storage: Storage,
    rank: int,
    world: int,
    seed: int,
    encode: bool = True,
) -> LatentLoader:
    d = cfg.data
    encoder = None
    if d.clips and encode:
        from trainer.data.raw import ClipEncoder

        encoder = ClipEncoder(
            d.vae, d.text_encoder, d.text_max_length, d.max_frames, d.captions, storage
        )
    return LatentLoader(
        index,
        storage,
        rank=rank,
        world_size=world,
        seed=seed,
        patch=cfg.model.patch,
        token_budget=d.token_budget,
        microbatches_per_step=d.microbatches_per_step,
        shuffle_shards=d.shuffle_shards,
        workers=d.workers,
        hidden=cfg.model.dims[1],
        balance=d.balance,
        encoder=encoder,
    )


class Trainer:
    def __init__(self, cfg: TrainConfig, run_cfg: Any, storage: Storage, dinfo: DistInfo):
        self.cfg, self.run_cfg, self.storage, self.d = cfg, run_cfg, storage, dinfo
        self.seed = run_cfg.seed
        self.remote = (
            run_dir(run_cfg.output_dir, run_cfg.name) if is_s3(run_cfg.output_dir) else None
        )
        self.local = local_run_dir(run_cfg.output_dir, run_cfg.name, run_cfg.cache_dir)
        self.ckpt = CheckpointStore(
            self.local / "checkpoints",
            join(self.remote, "checkpoints") if self.remote else None,
            storage,
            dinfo.rank,
            timeout_s=cfg.save_timeout_s,
        )
        self.index = training_index(cfg, storage)
        _check_model_matches(cfg, self.index.entries[0].shape[0])
        self.loader = _loader(cfg, self.index, storage, dinfo.rank, dinfo.world_size, self.seed)
        self.lengths = self.loader.lengths
        self.diffusion = build_diffusion(cfg)
        self.bf16 = use_bf16(cfg)
        self.dtype = torch.bfloat16 if self.bf16 else torch.float32
        self.history: list[dict[str, Any]] = []

    # -- setup -----------------------------------------------------------------------------------

    def setup(self, resume: str | None) -> None:
        import deepspeed

        from trainer.ema import EMA

        tag = self.ckpt.resume_tag(resume)
        state: dict[str, Any] | None = None
        universal = False
        path = None
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
        torch.manual_seed(self.seed)
        model = build_model(self.cfg)
        self.flops_model = model
        optimizer = build_optimizer(self.cfg, model)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(self.cfg))
        ds_cfg = deepspeed_config(
            self.cfg, self.d.world_size, model.num_params(), load_universal=universal
        )
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_cfg
        )
        self.ema = EMA(self.engine.module, self.cfg.ema_decay) if self.cfg.ema_decay > 0 else None
        self.step, self.epoch, self.step_in_epoch = 0, 0, 0
        self.tokens_seen, self.samples_seen = 0, 0
        self.textless = 0  # micro-batches (all ranks, this run) whose every caption was dropped
        if tag is not None and state is not None:
            load_path, _ = self.engine.load_checkpoint(
                str(self.ckpt.local), tag=tag, load_module_strict=True
            )
            if load_path is None:
                raise JobError(f"{self.ckpt.local / tag}: DeepSpeed could not load the checkpoint")
            self.step, self.epoch, self.step_in_epoch = (
                state["step"],
                state["epoch"],
                state["step_in_epoch"],
            )
            self.tokens_seen, self.samples_seen = state["tokens_seen"], state["samples_seen"]
            if self.ema is not None and (path / "ema.safetensors").exists():
                from safetensors.torch import load_file

                self.ema.load_full_state(load_file(str(path / "ema.safetensors")))
            if not load_rank_files(path, self.d.rank):
                log.info("rank %d: no RNG state in %s (new rank)", self.d.rank, tag)
            self.history = state.get("history", [])
            log.info("resumed from %s at step %d (epoch %d)", tag, self.step, self.epoch)
        self.peak = self.cfg.peak_tflops or measure_peak_tflops(self.d.device, self.bf16)

    # -- one optimizer step ------------------------------------------------------------------------

    def _denoiser(self) -> Any:
        def call(x: torch.Tensor, t: torch.Tensor, batch: Any) -> torch.Tensor:
            return self.engine(x.to(self.dtype), t.to(self.dtype), batch).float()

        return call

    def train_step(self, data: StepData) -> dict[str, float]:
        from trainer.diffusion import per_sample
        from trainer.model import drop_tokens, pack

        cfg = self.cfg
        g_total = cfg.data.microbatches_per_step
        if cfg.loss_averaging == "token":
            norm = sum(kept_tokens(n, cfg.data.token_drop) for n in data.step_lengths)
        else:
            norm = data.global_samples
        loss_sum = torch.zeros((), dtype=torch.float64)
        flops, textless = 0.0, 0
        for samples, mb_id in zip(data.microbatches, data.microbatch_ids, strict=True):
            gen = microbatch_generator(self.seed, data.epoch, data.step_in_epoch, mb_id)
            keep_text = torch.rand(len(samples), generator=gen) >= cfg.data.caption_dropout
            texts = [
                s.text if k else s.text.new_zeros(0, s.text.shape[-1])
                for s, k in zip(samples, keep_text.tolist(), strict=True)
            ]
            textless += all(len(tx) == 0 for tx in texts)  # cross-attention gets no key at all
            x0, batch = pack([s.latent for s in samples], texts, cfg.model.patch)
            if cfg.data.token_drop > 0:
                x0, batch, _ = drop_tokens(x0, batch, cfg.data.token_drop, gen)
            x0, batch = x0.to(self.d.device), batch.to(self.d.device)
            per_token = self.diffusion.training_loss(self._denoiser(), x0, batch, generator=gen)
            part = (
                per_token.sum()
                if cfg.loss_averaging == "token"
                else per_sample(per_token, batch).sum()
            )
            self.engine.backward(part * (g_total / norm))
            self.engine.step()
            loss_sum += part.detach().double().cpu()
            for i in range(len(samples)):
                n = int(batch.cu_seqlens[i + 1] - batch.cu_seqlens[i])
                flops += n * self.flops_model.flops_per_token(n, len(texts[i]))
        stats = torch.tensor([float(loss_sum), flops, textless], dtype=torch.float64)
        dist.all_reduce(stats)
        if self.ema is not None:
            self.ema.update()
        gn = self.engine.get_global_grad_norm()
        return {
            "loss": float(stats[0]) / norm,
            "flops": float(stats[1]),
            "textless_microbatches": float(stats[2]),
            "grad_norm": float(gn) if gn is not None else float("nan"),
            "lr": float(self.scheduler.get_last_lr()[0]),
            "tokens": float(data.global_tokens),
            "samples": float(data.global_samples),
        }

    # -- checkpointing ---------------------------------------------------------------------------

    def save(self) -> None:
        tag = tag_for(self.step)
        hooks.active.at("save:begin", self)
        path = self.ckpt.write_engine(self.engine, tag, self.d.local_rank)
        save_rank_files(path, self.d.rank)
        ema = self.ema.full_state() if self.ema is not None else None
        if self.d.rank == 0:
            if ema is not None:
                from safetensors.torch import save_file

                save_file(ema, str(path / "ema.safetensors"))
            write_state(
                path,
                {
                    "step": self.step,
                    "epoch": self.epoch,
                    "step_in_epoch": self.step_in_epoch,
                    "tokens_seen": self.tokens_seen,
                    "samples_seen": self.samples_seen,
                    "world_size": self.d.world_size,
                    "zero_stage": self.cfg.zero_stage,
                    "index": self.index.fingerprint(),
                    "code_version": code_version(),
                    "config": to_dict(self.cfg),
                    "run": to_dict(self.run_cfg),
                    "history": self.history,
                },
            )
        hooks.active.at("save:written", self)
        self.ckpt.publish(path, self.cfg.keep_checkpoints, self.d.local_rank)
        hooks.active.at("save:published", self)
        if self.d.rank == 0:
            log.info("checkpoint %s published", tag)

    def preview(self, writer: Any) -> None:
        """Rank 0 samples the preview prompts from the checkpoint it just published; the other
        ranks wait at the barrier (previews must take less than train.dist_timeout_s)."""
        p = self.cfg.preview
        if self.d.rank == 0:
            from trainer.sample import run_sample

            tag = tag_for(self.step)
            out = self.local / "previews" / tag
            t0 = time.monotonic()
            try:
                run_sample(
                    str(self.ckpt.local / tag),
                    p.vae or self.cfg.data.vae,
                    p.prompts,
                    str(out),
                    p.sample,
                    text_encoder=p.text_encoder or self.cfg.data.text_encoder,
                )
            except Exception as e:  # previews are a view on training, never a reason to stop it
                log.warning("preview at step %d failed: %s", self.step, e)
            else:
                if writer is not None:
                    import numpy as np
                    from PIL import Image

                    sheet = np.asarray(Image.open(out / "contact_sheet.png").convert("RGB"))
                    writer.add_image("preview", sheet, self.step, dataformats="HWC")
                if self.remote:
                    for f in sorted(out.iterdir()):
                        self.storage.upload(f, join(self.remote, "previews", tag, f.name))
                log.info(
                    "preview: %d prompts in %.1fs -> %s", len(p.prompts), time.monotonic() - t0, out
                )
        dist.barrier()

    # -- the loop --------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        writer = None
        if self.d.rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(self.local / "tensorboard"), purge_step=self.step)
            log.info(
                "train: DiT-%s %.2fM params, ZeRO-%d, %s, world %d, %d micro-batches of %d tokens "
                "per step, steps %d -> %d",
                cfg.model.size,
                self.flops_model.num_params() / 1e6,
                cfg.zero_stage,
                "bf16" if self.bf16 else "fp32",
                self.d.world_size,
                cfg.data.microbatches_per_step,
                cfg.data.token_budget,
                self.step,
                cfg.steps,
            )
        t_start = time.monotonic()
        t_window, tokens_window, samples_window, flops_window = time.monotonic(), 0.0, 0.0, 0.0
        start_step = self.step
        if self.step >= cfg.steps:
            log.info("already at step %d of %d: nothing to train", self.step, cfg.steps)
        else:
            from trainer.watchdog import Watchdog

            dog = Watchdog(self.cfg.watchdog_s, self.d.rank).start()
            for data in self.loader.iterate(self.epoch, self.step_in_epoch):
                s = self.train_step(data)
                dog.beat(f"step {self.step + 1}")
                self.step += 1
                self.epoch, self.step_in_epoch = data.epoch, data.step_in_epoch + 1
                self.tokens_seen += int(s["tokens"])
                self.samples_seen += int(s["samples"])
                self.textless += int(s["textless_microbatches"])
                tokens_window += s["tokens"]
                samples_window += s["samples"]
                flops_window += s["flops"]
                self.history.append({"step": self.step, "loss": s["loss"], "wall": time.time()})
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    dt = time.monotonic() - t_window
                    mfu = flops_window / dt / (self.peak * 1e12 * self.d.world_size)
                    if writer is not None:
                        for k, v in (
                            ("loss", s["loss"]),
                            ("grad_norm", s["grad_norm"]),
                            ("lr", s["lr"]),
                            ("tokens_per_s", tokens_window / dt),
                            ("samples_per_s", samples_window / dt),
                            ("mfu", mfu),
                        ):
                            writer.add_scalar(f"train/{k}", v, self.step)
                        eta = (
                            (time.monotonic() - t_start)
                            / (self.step - start_step)
                            * (cfg.steps - self.step)
                        )
                        log.info(
                            "step %d/%d loss %.4f grad %.3f lr %.2e | %.0f tok/s %.1f samples/s "
                            "MFU %.1f%% | epoch %d | eta %.0fs",
                            self.step,
                            cfg.steps,
                            s["loss"],
                            s["grad_norm"],
                            s["lr"],
                            tokens_window / dt,
                            samples_window / dt,
                            100 * mfu,
                            self.epoch,
                            eta,
                        )
                    t_window, tokens_window, samples_window, flops_window = (
                        time.monotonic(),
                        0,
                        0,
                        0,
                    )
                if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                    with dog.allowance(cfg.save_timeout_s, f"checkpoint at step {self.step}"):
                        self.save()
                    if cfg.preview.every and self.step % cfg.preview.every == 0:
                        self.preview(writer)
                        dog.beat(f"preview at step {self.step}")
                if self.step >= cfg.steps:
                    break
            dog.stop()
        if writer is not None:
            writer.close()
        wall = time.monotonic() - t_start
        summary = {
            "steps": self.step,
            "trained_steps": self.step - start_step,
            "final_loss": self.history[-1]["loss"] if self.history else None,
            "tokens_seen": self.tokens_seen,
            "samples_seen": self.samples_seen,
            "textless_microbatches": self.textless,
            "world_size": self.d.world_size,
            "wall_s": round(wall, 2),
            "checkpoint": self.ckpt.latest(),
        }
        if self.d.rank == 0:
            (self.local / "train_summary.json").write_text(json.dumps(summary, indent=2))
            if self.remote:
                self.storage.upload(
                    self.local / "train_summary.json", join(self.remote, "train_summary.json")
                )
            log.info(
                "train: %d steps (%d this run) in %.1fs, final loss %s, %d tokens seen; latest %s",
                summary["steps"],
                summary["trained_steps"],
                wall,
                summary["final_loss"],
                self.tokens_seen,
                summary["checkpoint"],
            )
        return summary


def lost_peer_message(e: BaseException, rank: int, step: int) -> str | None:
    """A readable account of a collective that failed because a peer went away (gloo and NCCL
    report it as a connection error naming the peer's address), or None for other errors."""
    text = str(e)
    markers = (
        "Connection closed by peer",
        "Connection reset by peer",
        "Broken pipe",
        "Connection refused",
        "NCCL communicator was aborted",
        "remote process exited",
    )
    if not any(m in text for m in markers):
        return None
    peers = sorted(set(re.findall(r"\[([0-9A-Fa-f.:]+)\]:\d+", text)))
    who = f"the node at {', '.join(peers)}" if peers else "a peer"
    return (
        f"rank {rank} lost contact with {who} during step {step + 1}: that node died or the "
        f"network to it failed ({text.splitlines()[0][:300]}). Relaunch every node with "
        "--resume auto (or use spacetime launch --max-restarts N) to continue from the latest "
        "checkpoint."
    )


def train(cfg: Any, resume: str | None = None) -> dict[str, Any]:
    """The entry function for every launcher. `cfg` is a SpacetimeConfig."""
    tcfg: TrainConfig = cfg.train
    if not tcfg.data.latents and not tcfg.data.clips:
        raise ValueError(
            "train.data.latents is empty: point it at the output of `spacetime encode` (or set "
            "train.data.clips and train.data.vae to encode clip shards on the fly)"
        )
    tcfg.data.validate()
    dinfo = init_distributed(tcfg.dist_timeout_s)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    trainer = Trainer(tcfg, cfg.run, Storage(cfg.storage), dinfo)
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
