"""`spacetime train-vae`: train the causal VAE on clip shards (reconstruction + KL) under the same
DeepSpeed engine and checkpoint store as the DiT trainer.

Clips are cut into random crops of `frames` x `crop` x `crop`; a few clips are held out (by key)
for PSNR. Each optimizer step draws one global batch of crops and posterior noise from generators
seeded by (seed, step); rank r trains on its contiguous slice of it. So a resume needs no RNG state,
and 1 or N ranks train on the same global batches (DeepSpeed averages the gradients of equal
slices, which is the global mean). Runs as a plain process (a world of one) or under torchrun /
`spacetime launch -- train-vae ...`.

Checkpoints go to {output}/checkpoints/step-N (written as `.partial`, published by writing `latest`
last; trainer/checkpoint.py), the final model to {output}/vae (config.json with the latent
statistics, model.safetensors), with side-by-side reconstructions of the held-out clips as mp4 and
png.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from infra.errors import JobError
from infra.host_heap import retain_freed_memory
from infra.media import decode_frames
from infra.shards import iter_samples, open_clips
from infra.storage import Storage
from trainer import deepspeed_init
from trainer.checkpoint import CheckpointStore, check_resume, code_version, tag_for, write_state
from trainer.engine import DistInfo, deepspeed_config, distributed
from trainer.vae.config import VAETrainConfig
from trainer.vae.heldout import evaluate, save_reconstructions, set_latent_stats
from trainer.vae.model import CausalVAE
from trainer.vae.pixels import to_signed

log = logging.getLogger(__name__)

# Each step's crops and noise are drawn from (seed, step) over the clips: a resume keeps these.
RESUME_FIXED = (
    "seed",
    "batch_size",
    "frames",
    "long_frames",
    "long_every",
    "crop",
    "content_crops",
    "holdout",
    "size",
    "space_stride",
    "kl_weight",
    "temporal_weight",
    "spatial_weight",
    "foreground_weight",
    "foreground_margin",
    "recon_loss",
    "latent_channels",
    "time_stride",
    "temporal_resample",
    "patch",
    "schedule",  # a checkpoint saved without the schedule's state cannot take one up
    "min_lr_ratio",
)


def load_clips(
    src: str, storage: Storage, cfg: VAETrainConfig
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(train clips, held-out clips) as frame arrays; clips smaller than a crop are skipped."""
    clips = []
    clip_set = open_clips(src, storage)
    for shard in clip_set.shards:
        selected = clip_set.keys(shard)
        for s in iter_samples(shard, storage):
            if selected is not None and s["__key__"] not in selected:
                continue
            frames = decode_frames(s["mp4"], max_frames=64)
            if frames.shape[0] >= cfg.frames and min(frames.shape[1:3]) >= cfg.crop:
                clips.append((s["__key__"], frames))
    if len(clips) <= cfg.holdout:
        raise ValueError(
            f"{src}: {len(clips)} usable clips; need more than the {cfg.holdout} held out"
        )
    clips.sort(key=lambda kc: hashlib.sha1(kc[0].encode()).hexdigest())
    return [c for _, c in clips[cfg.holdout :]], [c for _, c in clips[: cfg.holdout]]


def crop(
    frames: np.ndarray, cfg: VAETrainConfig, rng: random.Random, length: int = 0
) -> torch.Tensor:
    """A random crop of `length` frames (0: cfg.frames) and cfg.crop pixels square; with
    cfg.content_crops, that share of crops centred on a random pixel of the clip's content."""
    n, side = length or cfg.frames, cfg.crop
    t0 = rng.randrange(0, frames.shape[0] - n + 1)
    clip = frames[t0 : t0 + n]
    h, w = clip.shape[1:3]
    ys = xs = None
    if cfg.content_crops and rng.random() < cfg.content_crops:
        ys, xs = np.nonzero(content(clip))
    if ys is not None and len(ys):
        i = rng.randrange(len(ys))
        y0 = min(max(0, int(ys[i]) - side // 2), h - side)
        x0 = min(max(0, int(xs[i]) - side // 2), w - side)
    else:
        y0, x0 = rng.randrange(0, h - side + 1), rng.randrange(0, w - side + 1)
    return to_signed(clip[:, y0 : y0 + side, x0 : x0 + side])


def content(clip: np.ndarray, threshold: int = 13) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (H, W) bool: pixels that differ from the clip's median colour by
    more than `threshold` (of 255; `foreground`'s 0.1 of [-1, 1]) in some frame and channel."""
    median = np.median(clip.reshape(-1, 3), axis=0).astype(np.int16)
    return (np.abs(clip.astype(np.int16) - median) > threshold).any(axis=(0, 3))


def _step_seed(cfg: VAETrainConfig, step: int) -> int:
    return cfg.seed * 1_000_003 + step


def _rank_slice(cfg: VAETrainConfig, rank: int, world: int) -> slice:
    per = cfg.batch_size // world
    return slice(rank * per, (rank + 1) * per)


def step_batch(
    train: list[np.ndarray], cfg: VAETrainConfig, step: int, rank: int, world: int
) -> torch.Tensor:
    """This rank's slice of step `step`'s global batch of crops (the same for any world size);
    on long steps (cfg.long_frames) the crops are long, from the clips that hold them."""
    n = step_frames(cfg, step)
    pool = train if n == cfg.frames else clips_holding(train, n)
    rng = random.Random(_step_seed(cfg, step))
    windows = [(pool[rng.randrange(len(pool))], rng.random()) for _ in range(cfg.batch_size)]
    return torch.stack(
        [crop(c, cfg, random.Random(r), n) for c, r in windows[_rank_slice(cfg, rank, world)]]
    )


def clips_holding(train: list[np.ndarray], n: int) -> list[np.ndarray]:
    """The clips of at least n frames (a long step's pool); none is an error."""
    pool = [c for c in train if c.shape[0] >= n]
    if not pool:
        raise ValueError(f"no training clip has vae_train.long_frames={n} frames")
    return pool


def step_frames(cfg: VAETrainConfig, step: int) -> int:
    """Frames per crop at `step`: cfg.long_frames on every cfg.long_every-th step, else cfg.frames."""
    long = cfg.long_frames and step % cfg.long_every == cfg.long_every - 1
    return cfg.long_frames if long else cfg.frames


def step_noise(
    cfg: VAETrainConfig, latent: tuple[int, ...], step: int, rank: int, world: int
) -> torch.Tensor:
    """This rank's slice of step `step`'s posterior noise; `latent` is a cfg.frames crop's latent
    shape, lengthened on long steps."""
    c, t, h, w = latent
    t += (step_frames(cfg, step) - cfg.frames) // cfg.time_stride
    g = torch.Generator().manual_seed(_step_seed(cfg, step))
    return torch.randn((cfg.batch_size, c, t, h, w), generator=g)[_rank_slice(cfg, rank, world)]


def foreground(x: torch.Tensor, threshold: float = 0.1, margin: int = 0) -> torch.Tensor:
    """(B, C, T, H, W) in [-1, 1] -> (B, 1, T, H, W) 1.0 where a pixel differs from its crop's
    per-channel median (the background of a mostly plain frame) by more than `threshold`, or lies
    within `margin` pixels of one."""
    bg = x.flatten(2).median(dim=2).values[..., None, None, None]
    fg = ((x - bg).abs().amax(dim=1, keepdim=True) > threshold).to(x.dtype)
    if not margin:
        return fg
    k = 2 * margin + 1
    return F.max_pool3d(fg, (1, k, k), stride=1, padding=(0, margin, margin))


def vae_loss(
    vae: torch.nn.Module, x: torch.Tensor, noise: torch.Tensor, cfg: VAETrainConfig
) -> torch.Tensor:
    rec, post = vae(x, noise=noise)
    rec = rec.float()
    err = rec - x
    per_pixel = err.pow(2) if cfg.recon_loss == "mse" else err.abs()
    if cfg.foreground_weight != 1.0:
        w = 1 + (cfg.foreground_weight - 1) * foreground(x, margin=cfg.foreground_margin)
        recon = (per_pixel * w).mean() / w.mean()
    else:
        recon = per_pixel.mean()
    temporal = (err[:, :, 1:] - err[:, :, :-1]).abs().mean()
    kl = post.kl().float().mean() / x[0].numel()
    loss = recon + cfg.temporal_weight * temporal + cfg.kl_weight * kl
    if cfg.spatial_weight:
        dy = (err[:, :, :, 1:] - err[:, :, :, :-1]).abs().mean()
        dx = (err[..., 1:] - err[..., :-1]).abs().mean()
        loss = loss + cfg.spatial_weight * (dx + dy)
    return loss


def train_vae(
    src: str, output: str, cfg: VAETrainConfig, storage: Storage | None = None, resume: bool = False
) -> dict[str, Any]:

    storage = storage or Storage()
    cfg.validate()
    with distributed() as d:
        if cfg.batch_size % d.world_size:
            raise ValueError(
                f"vae_train.batch_size {cfg.batch_size} must divide over {d.world_size} ranks"
            )
        train, held_clips = load_clips(src, storage, cfg)
        if cfg.long_frames:  # refused before the first step, not at the first long one
            try:
                clips_holding(train, cfg.long_frames)
            except ValueError as e:
                raise ValueError(f"{src}: {e}") from None
        held = [crop(c, cfg, random.Random(i)) for i, c in enumerate(held_clips)]  # fixed crops
        out = Path(output)
        store = CheckpointStore(out / "checkpoints", None, storage, d.rank)
        tag = store.resume_tag("auto" if resume else None)
        state: dict[str, Any] = {}
        universal = False
        if tag is not None:
            path, state, tag, universal = store.prepare_resume(
                tag, d.world_size, cfg.zero_stage, d.local_rank
            )
            # A setting added since that checkpoint was written reads as its default, which
            # every new setting keeps equal to the behaviour before it.
            then = asdict(VAETrainConfig()) | state["config"]
            check_resume(then, asdict(cfg), RESUME_FIXED, str(path))
        if cfg.host_heap_retain:
            retain_freed_memory()
        torch.manual_seed(cfg.seed)
        vae = CausalVAE(cfg.vae_config())
        vcfg = vae.cfg
        latent = (
            vcfg.latent_channels,
            1 + (cfg.frames - 1) // vcfg.time_stride,
            cfg.crop // vcfg.space_stride,
            cfg.crop // vcfg.space_stride,
        )
        opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=0.0)
        # The engine steps it and saves it in its checkpoints, so a resume continues the schedule.
        # None at a constant rate: its checkpoints stay as before this option, and resume as such.
        cosine = cfg.schedule != "constant"
        schedule = torch.optim.lr_scheduler.LambdaLR(opt, cfg.lr_factor) if cosine else None
        ds = deepspeed_config(
            zero_stage=cfg.zero_stage,
            micro_batch=cfg.batch_size // d.world_size,
            accumulation=1,
            world_size=d.world_size,
            grad_clip=cfg.grad_clip,
            bf16=torch.cuda.is_available(),
            num_params=sum(p.numel() for p in vae.parameters()),
            load_universal=universal,
        )
        engine, *_ = deepspeed_init.initialize(
            model=vae, optimizer=opt, lr_scheduler=schedule, config=ds
        )
        dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
        start = 0
        history: list[dict[str, float]] = []
        if tag is not None:
            if engine.load_checkpoint(str(store.local), tag=tag)[0] is None:
                raise JobError(f"{store.local / tag}: DeepSpeed could not load the checkpoint")
            start, history = state["step"], state.get("history", [])
            log.info("train-vae: resumed from %s at step %d", tag, start)
        psnr_before = evaluate(engine.module, held, d.device, dtype) if d.rank == 0 else 0.0
        t0 = time.monotonic()
        bar = tqdm(
            range(start, cfg.steps),
            desc="train-vae",
            initial=start,
            total=cfg.steps,
            disable=d.rank != 0,
        )
        for step in bar:
            x = step_batch(train, cfg, step, d.rank, d.world_size).to(d.device, dtype)
            noise = step_noise(cfg, latent, step, d.rank, d.world_size).to(d.device, dtype)
            lr_now = engine.get_lr()[0]  # this step's rate, before the engine steps the schedule
            loss = vae_loss(engine, x, noise, cfg)
            engine.backward(loss)
            engine.step()
            mean_loss = loss.detach().float().clone()
            dist.all_reduce(mean_loss)
            history.append(
                {"step": step + 1, "loss": mean_loss.item() / d.world_size, "lr": lr_now}
            )
            bar.set_postfix(loss=f"{history[-1]['loss']:.4f}")
            if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
                _checkpoint(engine, store, step + 1, cfg, d, history)
        summary: dict[str, Any] = {}
        if d.rank == 0:
            model = engine.module.float()
            psnr_after = evaluate(model, held, d.device, torch.float32)
            set_latent_stats(model, held, d.device)
            model.save_pretrained(out / "vae")
            save_reconstructions(model, held, out / "reconstructions", d.device)
            summary = {
                "steps": cfg.steps,
                "psnr_before": psnr_before,
                "psnr_after": psnr_after,
                "train_clips": len(train),
                "heldout_clips": len(held),
                "world_size": d.world_size,
                "seconds": round(time.monotonic() - t0, 1),
                "losses": [h["loss"] for h in history],
                "lrs": [h.get("lr") for h in history],  # None: saved before rates were kept
                "config": asdict(cfg),
            }
            (out / "summary.json").write_text(json.dumps(summary, indent=2))
            log.info(
                "train-vae: %d steps on %d rank(s), held-out PSNR %.2f -> %.2f dB; model in %s",
                cfg.steps,
                d.world_size,
                psnr_before,
                psnr_after,
                out / "vae",
            )
        dist.barrier()
        return summary


def _checkpoint(
    engine: Any,
    store: CheckpointStore,
    step: int,
    cfg: VAETrainConfig,
    d: DistInfo,
    history: list[dict[str, float]],
) -> None:
    tag = tag_for(step)
    path = store.write_engine(engine, tag, d.local_rank)
    if d.rank == 0:
        write_state(
            path,
            {
                "step": step,
                "world_size": d.world_size,
                "zero_stage": cfg.zero_stage,
                "code_version": code_version(),
                "config": asdict(cfg),
                "history": history,
            },
        )
    store.publish(path, cfg.keep_checkpoints, d.local_rank)
