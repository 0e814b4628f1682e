"""`spacetime train-vae`: train the causal VAE on clip shards (reconstruction + KL).

Plain PyTorch for now (the DeepSpeed trainer of issue 8 will take this over). Clips are cut into
random crops of `frames` x `crop` x `crop`; a few clips are held out (by key) for PSNR. Checkpoints
go to {output}/checkpoints/step-N (published by writing `latest` last) and the final model to
{output}/vae (config.json with the latent statistics, model.safetensors), with side-by-side
reconstructions of the held-out clips as mp4 and png.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from infra.storage import Storage
from trainer.data.clips import decode_frames, iter_samples, list_shards
from trainer.vae.config import VAETrainConfig
from trainer.vae.model import CausalVAE

log = logging.getLogger(__name__)


def _to_tensor(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (3, T, H, W) float in [-1, 1]."""
    return torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a.clamp(-1, 1) - b) / 2).pow(2).mean().item()
    return 10 * math.log10(1 / max(mse, 1e-12))


def load_clips(
    src: str, storage: Storage, cfg: VAETrainConfig
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(train clips, held-out clips) as frame arrays; clips smaller than a crop are skipped."""
    clips = []
    for shard in list_shards(src, storage):
        for s in iter_samples(shard, storage):
            frames = decode_frames(s["mp4"], max_frames=64)
            if frames.shape[0] >= cfg.frames and min(frames.shape[1:3]) >= cfg.crop:
                clips.append((s["__key__"], frames))
    if len(clips) <= cfg.holdout:
        raise ValueError(
            f"{src}: {len(clips)} usable clips; need more than the {cfg.holdout} held out"
        )
    clips.sort(key=lambda kc: hashlib.sha1(kc[0].encode()).hexdigest())
    return [c for _, c in clips[cfg.holdout :]], [c for _, c in clips[: cfg.holdout]]


def crop(frames: np.ndarray, cfg: VAETrainConfig, rng: random.Random) -> torch.Tensor:
    t0 = rng.randrange(0, frames.shape[0] - cfg.frames + 1)
    y0 = rng.randrange(0, frames.shape[1] - cfg.crop + 1)
    x0 = rng.randrange(0, frames.shape[2] - cfg.crop + 1)
    return _to_tensor(frames[t0 : t0 + cfg.frames, y0 : y0 + cfg.crop, x0 : x0 + cfg.crop])


def evaluate(vae: CausalVAE, held: list[torch.Tensor]) -> float:
    vae.eval()
    with torch.no_grad():
        scores = [psnr(vae.decode(vae.encode(x[None]).mean)[0], x) for x in held]
    vae.train()
    return float(np.mean(scores))


def train_vae(
    src: str, output: str, cfg: VAETrainConfig, storage: Storage | None = None, resume: bool = False
) -> dict[str, float]:
    storage = storage or Storage()
    cfg.validate()
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    train, held_clips = load_clips(src, storage, cfg)
    held = [crop(c, cfg, random.Random(i)) for i, c in enumerate(held_clips)]  # fixed eval crops
    vae = CausalVAE(cfg.vae_config())
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=0.0)
    out = Path(output)
    ckpt_dir = out / "checkpoints"
    start = 0
    latest = ckpt_dir / "latest"
    if latest.is_file() and not resume:
        raise FileExistsError(
            f"{output} already has checkpoints; pass --resume auto to continue, or use a new output"
        )
    if resume and latest.is_file():
        state = torch.load(ckpt_dir / latest.read_text().strip() / "state.pt", weights_only=False)
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start = state["step"]
        rng.setstate(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        log.info("train-vae: resumed from step %d", start)
    psnr_before = evaluate(vae, held)
    t0 = time.monotonic()
    bar = tqdm(range(start, cfg.steps), desc="train-vae", initial=start, total=cfg.steps)
    for step in bar:
        x = torch.stack(
            [crop(train[rng.randrange(len(train))], cfg, rng) for _ in range(cfg.batch_size)]
        )
        rec, post = vae(x)
        recon = (rec - x).pow(2).mean() if cfg.recon_loss == "mse" else (rec - x).abs().mean()
        temporal = ((rec[:, :, 1:] - rec[:, :, :-1]) - (x[:, :, 1:] - x[:, :, :-1])).abs().mean()
        kl = post.kl().mean() / x[0].numel()
        loss = recon + cfg.temporal_weight * temporal + cfg.kl_weight * kl
        opt.zero_grad()
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            _checkpoint(ckpt_dir, step + 1, vae, opt, rng)
    psnr_after = evaluate(vae, held)
    _set_latent_stats(vae, held)
    vae.save_pretrained(out / "vae")
    _save_reconstructions(vae, held, out / "reconstructions")
    summary = {
        "steps": cfg.steps,
        "psnr_before": psnr_before,
        "psnr_after": psnr_after,
        "train_clips": len(train),
        "heldout_clips": len(held),
        "seconds": round(time.monotonic() - t0, 1),
        "config": asdict(cfg),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    log.info(
        "train-vae: %d steps, held-out PSNR %.2f -> %.2f dB; model in %s",
        cfg.steps,
        psnr_before,
        psnr_after,
        out / "vae",
    )
    return summary


def _checkpoint(
    ckpt_dir: Path, step: int, vae: CausalVAE, opt: torch.optim.Optimizer, rng: random.Random
) -> None:
    name = f"step-{step:08d}"
    tmp = ckpt_dir / f".{name}.tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    state = {
        "model": vae.state_dict(),
        "optimizer": opt.state_dict(),
        "step": step,
        "rng": rng.getstate(),
        "torch_rng": torch.get_rng_state(),
    }
    torch.save(state, tmp / "state.pt")
    final = ckpt_dir / name
    if final.exists():  # left by a run that crashed before moving `latest` to it
        shutil.rmtree(final)
    tmp.rename(final)
    pointer = ckpt_dir / ".latest.tmp"
    pointer.write_text(name)
    pointer.rename(ckpt_dir / "latest")  # written last: a crash before this leaves the old one


def _set_latent_stats(vae: CausalVAE, held: list[torch.Tensor]) -> None:
    with torch.no_grad():
        z = torch.cat([vae.encode(x[None]).mean.flatten(2) for x in held], dim=2)[0]  # (C, n)
    vae.cfg.latent_mean = z.mean(1).tolist()
    vae.cfg.latent_std = z.std(1).clamp(min=1e-4).tolist()


def _save_reconstructions(vae: CausalVAE, held: list[torch.Tensor], out: Path) -> None:
    from PIL import Image

    from data_pipeline.shapes import write_mp4

    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        for i, x in enumerate(held):
            rec = vae.decode(vae.encode(x[None]).mean)[0].clamp(-1, 1)
            pair = torch.cat([x, rec], dim=3)  # original | reconstruction, side by side
            frames = ((pair + 1) * 127.5).round().byte().permute(1, 2, 3, 0).numpy()
            write_mp4(out / f"heldout-{i}.mp4", frames)
            Image.fromarray(np.concatenate(list(frames), axis=0)).save(out / f"heldout-{i}.png")
