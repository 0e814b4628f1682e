"""`spacetime sample`: text-to-video/image, image-to-video, extension, interpolation and SDEdit.

All modes are one mechanism, as in the Sora report: some latent frames are given (encoded from an
image or video) and held on their true noising path by a per-frame mask, the rest are denoised;
SDEdit instead starts from a given video noised to a chosen strength. Classifier-free guidance runs
the denoiser with and without the prompt on the same packed token layout. Several prompts are
packed into one batch (NaViT), so they may differ in size.

Loads a training checkpoint (consolidating ZeRO partitions in one process; EMA weights by default)
or an exported directory, without DeepSpeed's engine.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from PIL import Image

from infra.config import to_dict
from infra.media import contact_sheet, read_frames, write_mp4
from infra.storage import Storage
from trainer.config import TrainConfig
from trainer.diffusion.objectives import build_diffusion
from trainer.engine import init_distributed
from trainer.model.dit import DiT
from trainer.model.packing import PackedBatch, pack, patchify, unpack
from trainer.model.sequence_parallel import SequenceShard, shard_pack
from trainer.sample_config import SampleConfig
from trainer.text.encoder import TextEncoder, TextEncoderConfig
from trainer.text.which import text_encoder_for
from trainer.vae.pixels import to_signed, to_uint8
from trainer.vae.pretrained import VideoVAE
from trainer.weights import load_model

# (prompt, width, height, seconds, fps) -> the text the model is conditioned on.
Rewrite = Callable[[str, int, int, float, float], str]

log = logging.getLogger(__name__)


def check_vae(train_cfg: TrainConfig, vae: VideoVAE, which: str) -> None:
    """Refuses a VAE other than the one whose latents the model learned (recorded in its config;
    models trained before it was recorded accept any VAE with the right channel count)."""
    want = train_cfg.model.latent_space
    if want and want != vae.tag:
        raise ValueError(
            f"{which} learned latents of {want}; --vae {vae.path} is {vae.tag} "
            f"({vae.info.family}): its latents mean something else, sample with the VAE the "
            f"training latents were encoded with"
        )


def guided(
    model: DiT, cond: PackedBatch, uncond: PackedBatch, scale: float, group: Any = None
) -> Any:
    """A denoiser applying classifier-free guidance: u + s·(c - u), with and without text. With a
    process `group`, every rank of it computes its shard of each pack (sequence parallelism) and
    the shards are summed back, so each rank holds the whole prediction and samples in step."""
    shards: dict[int, SequenceShard] = {}
    if group is not None:
        p, r = dist.get_world_size(group), dist.get_rank(group)
        shards = {id(b): shard_pack(b, group, p, r) for b in (cond, uncond)}

    def run(
        x: torch.Tensor, t: torch.Tensor, batch: PackedBatch, x0_prev: torch.Tensor | None
    ) -> torch.Tensor:
        out = model(x, t, batch, shards.get(id(batch)), x0_prev)
        if group is not None:
            dist.all_reduce(out, group=group)  # each row is non-zero on exactly one rank
        return out

    def call(
        x: torch.Tensor, t: torch.Tensor, _batch: PackedBatch, x0_prev: torch.Tensor | None = None
    ) -> torch.Tensor:
        # Both branches see the same previous estimate: the guided one the sampler stepped with.
        c = run(x, t, cond, x0_prev)
        if scale == 1.0:
            return c
        u = run(x, t, uncond, x0_prev)
        return u + scale * (c - u)

    return call


def latent_grid(cfg: SampleConfig, model_cfg: Any, vae_cfg: Any) -> tuple[int, int, int, int]:
    ts, ss = vae_cfg.time_stride, vae_cfg.space_stride
    pt, ph, pw = model_cfg.patch
    if cfg.height % (ss * ph) or cfg.width % (ss * pw):
        raise ValueError(
            f"height and width must be multiples of {ss * ph} (VAE stride x patch), "
            f"got {cfg.height}x{cfg.width}"
        )
    if (cfg.frames - 1) % ts:
        raise ValueError(
            f"frames must be 1 + {ts}k for this VAE (time stride {ts}), got {cfg.frames}"
        )
    t = 1 + (cfg.frames - 1) // ts
    if t % pt:
        raise ValueError(f"{cfg.frames} frames give {t} latent frames, not divisible by patch {pt}")
    return (model_cfg.in_channels, t, cfg.height // ss, cfg.width // ss)


def read_media(path: str | Path, frames: int, height: int, width: int) -> torch.Tensor:
    """An image or video file -> (3, T, H, W) in [-1, 1], resized, at most `frames` frames."""
    x = to_signed(read_frames(path, frames))
    x = torch.nn.functional.interpolate(
        x.permute(1, 0, 2, 3), size=(height, width), mode="bilinear", antialias=True
    )
    return x.permute(1, 0, 2, 3).clamp(-1, 1)


def _frames_for_latents(k: int, time_stride: int) -> int:
    return 1 + (k - 1) * time_stride


def conditioning(
    mode: str,
    shape: tuple[int, int, int, int],
    cfg: SampleConfig,
    vae: Any,
    inputs: list[str],
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(x0 latent, (T,) bool mask of given latent frames) for the modes that give frames."""
    if mode in ("t2v", "edit"):
        return None
    need = 2 if mode == "interpolate" else 1
    if len(inputs) < need:
        raise ValueError(f"mode {mode} needs {need} --input file(s), got {len(inputs)}")
    t = shape[1]
    k = 1 if mode == "i2v" else cfg.cond_latent_frames
    if k >= t or (mode == "interpolate" and 2 * k >= t):
        raise ValueError(f"{k} given latent frames leave nothing to generate in {t} latent frames")
    n_frames = _frames_for_latents(k, vae.time_stride)
    x0 = torch.zeros(shape)
    mask = torch.zeros(t, dtype=torch.bool)

    def encode(path: str, last: bool) -> torch.Tensor:
        video = read_media(path, 10_000 if last else n_frames, cfg.height, cfg.width)
        video = video[:, -n_frames:] if last else video[:, :n_frames]
        if video.shape[1] < n_frames:
            raise ValueError(
                f"{path}: {video.shape[1]} frames, {n_frames} needed for {k} latent frames"
            )
        with torch.no_grad():
            return vae.encode(video[None])[0]  # normalised (C, k, h, w)

    if mode in ("i2v", "extend", "interpolate"):
        # forward extension continues from the END of the given video
        x0[:, :k] = encode(inputs[0], last=mode == "extend")
        mask[:k] = True
    if mode == "extend_backward":
        x0[:, t - k :] = encode(inputs[0], last=False)
        mask[t - k :] = True
    if mode == "interpolate":
        x0[:, t - k :] = encode(inputs[1], last=False)
        mask[t - k :] = True
    return x0, mask


def sample_device() -> torch.device:
    """This process's GPU where there is one (a launched rank's own), else the CPU: the denoiser
    runs there; the noise is drawn on the CPU either way, so a seed gives the same sample."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def generate(
    model: DiT,
    train_cfg: TrainConfig,
    cfg: SampleConfig,
    texts: list[torch.Tensor],
    vae: Any,
    inputs: list[str] | None = None,
    group: Any = None,
    device: torch.device | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Returns (latents (C, T', H', W') per prompt, videos (3, T, H, W) in [-1, 1] per prompt).
    `group`: sample with sequence parallelism over this process group (see `guided`). The DiT is
    moved to `device` (default `sample_device()`) and denoises there; the VAE decodes on its own."""
    inputs = inputs or []
    device = device or sample_device()
    if vae.latent_channels != model.cfg.in_channels:
        raise ValueError(
            f"the VAE has {vae.latent_channels} latent channels, the model expects "
            f"{model.cfg.in_channels}"
        )
    shape = latent_grid(cfg, model.cfg, vae)
    n = len(texts)
    noise_lat = [
        torch.randn(shape, generator=torch.Generator().manual_seed(cfg.seed + i)) for i in range(n)
    ]
    noise, cond = pack(noise_lat, texts, model.cfg.patch)
    _, uncond = pack(noise_lat, [t.new_zeros(0, t.shape[-1]) for t in texts], model.cfg.patch)
    known = None
    start_x0 = None
    given = conditioning(cfg.mode, shape, cfg, vae, inputs)
    if given is not None:
        x0_lat, frame_mask = given
        x0_tok = torch.cat([patchify(x0_lat, model.cfg.patch)] * n)
        m = frame_mask[None, :, None, None].expand(1, *shape[1:]).float()
        # a token is given only if every latent frame it spans is given
        tok_mask = patchify(m, model.cfg.patch).min(-1).values.bool()
        known = (x0_tok, torch.cat([tok_mask] * n))
    if cfg.mode == "edit":
        if not inputs:
            raise ValueError("mode edit needs --input (the video to edit)")
        video = read_media(inputs[0], cfg.frames, cfg.height, cfg.width)
        if video.shape[1] < cfg.frames:
            raise ValueError(f"{inputs[0]}: {video.shape[1]} frames, {cfg.frames} needed")
        with torch.no_grad():
            z = vae.encode(video[None])[0]
        start_x0 = (torch.cat([patchify(z, model.cfg.patch)] * n), cfg.strength)
    diffusion = build_diffusion(train_cfg.objective, train_cfg.flow, train_cfg.ddpm)
    layout = cond  # unpack reads the CPU copy's grids and offsets
    model.to(device)
    noise, cond, uncond = noise.to(device), cond.to(device), uncond.to(device)
    if known is not None:
        known = (known[0].to(device), known[1].to(device))
    if start_x0 is not None:
        start_x0 = (start_x0[0].to(device), start_x0[1])
    denoise = guided(model, cond, uncond, cfg.guidance, group)
    if train_cfg.objective == "flow":
        if cfg.sampler not in ("auto", "euler"):
            raise ValueError(f"a flow model samples with euler, not {cfg.sampler}")
        out = diffusion.sample(
            denoise,
            noise,
            cond,
            steps=cfg.steps,
            known=known,
            start_x0=start_x0,
            self_condition=model.cfg.self_condition,
        )
    else:
        if cfg.sampler == "euler":
            raise ValueError("a DDPM model samples with ddim or ddpm, not euler")
        eta = 1.0 if cfg.sampler == "ddpm" else cfg.eta
        steps = None if cfg.sampler == "ddpm" else cfg.steps
        out = diffusion.sample(
            denoise,
            noise,
            cond,
            steps=steps,
            eta=eta,
            generator=torch.Generator().manual_seed(cfg.seed),
            known=known,
            start_x0=start_x0,
        )
    latents = unpack(out.cpu(), layout, model.cfg.patch)
    with torch.no_grad():
        videos = [vae.decode(z[None])[0].clamp(-1, 1) for z in latents]
    return latents, videos


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:48] or "empty"


def _sequence_parallel_group(model: DiT) -> Any:
    """Launched on several ranks (`spacetime launch --nproc-per-node P -- sample ...`), sampling
    runs sequence-parallel over all of them: long videos at inference. None for one process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    init_distributed()
    heads, world = model.cfg.dims[2], dist.get_world_size()
    if heads % world:
        raise ValueError(
            f"sampling on {world} ranks needs the model's {heads} heads to divide by it"
        )
    return dist.group.WORLD


def run_sample(
    checkpoint: str,
    vae_dir: str,
    prompts: list[str],
    output: str,
    cfg: SampleConfig,
    text_encoder: str | None = None,
    inputs: list[str] | None = None,
    rewrite: Rewrite | None = None,
    storage: Storage | None = None,
) -> dict[str, Any]:
    """`rewrite`: turns each prompt into the text the model is conditioned on (e.g. prompt
    upsampling in a caption set's style: recaption.upsample.Upsampler); the record keeps both.
    `storage` reads the training latents' records of their text encoder (trainer/text/which.py)."""
    if not prompts:
        raise ValueError("give at least one --prompt")
    t0 = time.monotonic()
    torch.manual_seed(cfg.seed)
    model, train_cfg, which = load_model(checkpoint, cfg.use_ema)
    vae = VideoVAE(vae_dir)
    check_vae(train_cfg, vae, which)
    encoder = TextEncoder(
        TextEncoderConfig(path=text_encoder_for(train_cfg, text_encoder, storage or Storage()))
    )
    if encoder.dim != model.cfg.text_dim:
        raise ValueError(
            f"the text encoder gives {encoder.dim}-dim states, the model was trained on "
            f"{model.cfg.text_dim}: pass the --text-encoder used by `spacetime encode`"
        )
    conditioned = list(prompts)
    if rewrite is not None:
        seconds = cfg.frames / cfg.fps
        conditioned = [rewrite(p, cfg.width, cfg.height, seconds, cfg.fps) for p in prompts]
    texts = encoder.encode(conditioned)
    group = _sequence_parallel_group(model)
    _, videos = generate(model, train_cfg, cfg, texts, vae, inputs, group)
    if group is not None and dist.get_rank() != 0:
        return {"samples": 0, "rank": dist.get_rank()}  # rank 0 writes the outputs
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    frames = [to_uint8(v) for v in videos]
    records = []
    for i, (prompt, f) in enumerate(zip(prompts, frames, strict=True)):
        stem = f"{i:02d}-{slug(prompt)}"
        if len(f) > 1:
            write_mp4(out / f"{stem}.mp4", f, fps=cfg.fps)
        Image.fromarray(f[0] if len(f) == 1 else contact_sheet([f])).save(out / f"{stem}.png")
        rec = {
            "prompt": prompt,
            "conditioned_on": conditioned[i],
            "seed": cfg.seed + i,
            "mode": cfg.mode,
            "inputs": inputs or [],
            "checkpoint": which,
            "sample": to_dict(cfg),
            "model": to_dict(train_cfg.model),
            "objective": train_cfg.objective,
            "vae": str(vae_dir),
            "text_encoder": encoder.path,
            "files": [f"{stem}.mp4", f"{stem}.png"],
        }
        (out / f"{stem}.json").write_text(json.dumps(rec, indent=2))
        records.append(rec)
    Image.fromarray(contact_sheet(frames)).save(out / "contact_sheet.png")
    summary = {
        "samples": len(records),
        "wall_s": round(time.monotonic() - t0, 2),
        "output": str(out),
    }
    log.info(
        "sample: %d %s samples (%d frames, %dx%d, %d steps, guidance %.1f) from %s in %.1fs -> %s",
        len(records),
        cfg.mode,
        cfg.frames,
        cfg.height,
        cfg.width,
        cfg.steps,
        cfg.guidance,
        which,
        summary["wall_s"],
        out,
    )
    return summary
