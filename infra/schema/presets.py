"""Named presets: plain functions returning a full config. A file or `--set` adjusts them."""

from __future__ import annotations

import difflib
from collections.abc import Callable

from infra.config import ConfigError
from infra.schema import SpacetimeConfig


def default() -> SpacetimeConfig:
    """The embedded default: local Ray, local files, CPU, a small model."""
    return SpacetimeConfig()


def tiny() -> SpacetimeConfig:
    """The smallest settings that still exercise every code path (tests, CI)."""
    cfg = SpacetimeConfig()
    cfg.run.name = "tiny"
    return cfg


def demo() -> SpacetimeConfig:
    """The `spacetime demo` run on the generated shapes videos (small frames, slow shapes)."""
    cfg = SpacetimeConfig()
    cfg.run.name = "demo"
    cfg.shard.min_side = 32  # 64x48 is the smallest shapes size
    cfg.shard.min_motion = 0.0003  # one small shape on a plain background moves few pixels
    cfg.shard.shard_max_bytes = 1024 * 1024  # several shards: encode and recaption run in parallel
    cfg.vae_train.batch_size = 8
    cfg.vae_train.crop = 32  # shapes videos are 48-96 px
    # A shape is a few latent pixels at 8x; at 4x with MSE the tiny VAE reconstructs it (with 8x and
    # L1 it decoded every clip to flat grey, PSNR looking fine: the background dominates PSNR).
    cfg.vae_train.space_stride = 4
    cfg.vae_train.recon_loss = "mse"
    # At 4x in time the tiny VAE smeared the moving object into ghost trails and lost its outline
    # (the scorer read shape 29% on its reconstructions); 2x with learned pair mixing and 1200
    # steps reads 96% (BENCHMARKS.md, demo quality). Its latents have twice the frames, but the
    # DiT's step holds the same token budget, so a step costs about the same.
    cfg.vae_train.time_stride = 2
    cfg.vae_train.temporal_resample = "learned"
    cfg.vae_train.steps = 1200
    # Pixels folded 2x2 into channels first: no convolution at full size, half the FLOPs and
    # time of a step (140 s against 271 s for 1200 steps on 2 cores), its reconstructions read as
    # the unfolded VAE's (shape, colour, direction, intact 100%), and the DiT learns shape from its
    # latents sooner: 85% at 600 steps against 67-69% (BENCHMARKS.md, round 20).
    cfg.vae_train.patch = 2
    # Every 4th step on 9-frame crops: trained on 5-frame crops only, frames past the 6th of a
    # sample drifted in colour (red to yellow, cyan to blue; 2 of 4 demo VAEs), the samples read
    # "changes colour"; with them no reconstruction of 33 frames does, for ~15% more VAE time
    # (BENCHMARKS.md, round 27).
    cfg.vae_train.long_frames = 9
    # On the light background (infra/demo/shapes.py) the 4-channel VAE shifted some colour's hue
    # by 81-119 RGB (green to teal, blue to cyan, red to orange) in 4 of 8 runs, and samples read
    # the neighbouring colour or changed colour. 8 channels keep the colours (100% in 8 of 8 runs
    # alone) and three crops in four centred on the object keep the shapes (held-out 144 of 144
    # alone); together they read held-out shape 141 of 144 draws and shape 96-100% over 8 seeds.
    # Twice the VAE's rate, tried with them in round 30, cost shape (mean 89% against 99.5%) and
    # alone broke colour (BENCHMARKS.md round 31).
    cfg.vae_train.latent_channels = 8
    cfg.vae_train.content_crops = 0.75
    t = cfg.train
    # 4 blocks of 128, not 6: a step costs 0.67-0.73x, and with the loss weighted toward the object
    # (below) shape reads 83% at 1500 steps against the 6-block model's 76%, in 542 s against 734
    # (BENCHMARKS.md, round 17).
    t.model.size = "XS-shallow"
    t.model.in_channels = 0  # read from the latents (the demo VAE's channels)
    # A direction's sign ("moving left": right edge early, left edge late) was not learned by 900
    # steps from per-axis positions; with the diagonals it was by 600 (BENCHMARKS.md, round 6).
    t.model.frac_pos_diagonals = True
    # Uniform timesteps: logit-normal rarely visits the high-noise end where a shape's layout and
    # direction are decided (PLATFORM.md calibration).
    t.flow.timestep_sampling = "uniform"
    # The object is ~4 of a clip's 144 tokens: its tokens' loss counts up to 5x (1 + 4 x distance
    # from the background), so a shape is not drowned by the background around it.
    t.flow.foreground_weight = 4.0
    # 4x4 latent pixels per token (16x16 pixels): a 64x64 17-frame sample is 144 tokens instead of
    # 576, so a step of the same token budget and cost holds 4x the clips. At 1x2x2 shape stayed
    # at chance (29-38%) through 1200 steps; at 1x4x4 it rises with steps (46% at 600, 67% at
    # 1500), and no sample splits or changes colour from step 450 (BENCHMARKS.md, round 10).
    t.model.patch = (1, 4, 4)
    # A strong resolution shift, 3x at these samples' 144 tokens: more draws at high noise, where
    # the caption decides what is drawn (at 1.5x direction came 150 steps later: round 7).
    t.flow.shift_base_tokens = 16
    # Half round 19's batch (~7 clips a micro-batch, ~14 a step): a step costs ~0.55x, and shape
    # reads 64-78 / 94 / 97-99% at 600 / 1200 / 1800 steps (two seeds), the clips of 300 / 600 /
    # 900 full-batch steps, which read 47 / 85 / 93% (BENCHMARKS.md, round 20).
    t.data.token_budget = 1024
    t.data.microbatches_per_step = 2
    t.data.caption_dropout = 0.1
    # Muon on the blocks' matrices (ZeRO 0: trainer/muon.py) and the contrastive term, each
    # prediction also pushed away from another clip's target, so the caption's shape word must carry
    # what all clips share: on the 4-block, object-weighted model shape reads 89% at 1200 steps
    # against 71-72% (BENCHMARKS.md, round 18). At 0.1 rather than 0.05, held-out shape at 1050
    # steps read 94 of 108 draws against 82 over six seeds, never fewer on a seed (round 22).
    t.zero_stage = 0
    t.optim.name = "muon"
    t.flow.contrastive = 0.1
    # 3x round 18's lr: shape reads 79-83% at 900 steps on three seeds against 64% at 1e-3, and
    # direction 100% by step 300 (BENCHMARKS.md, round 19).
    t.optim.lr = 3e-3
    t.optim.warmup_steps = 50
    t.ema_decay = 0.99
    t.checkpoint_every = 50
    t.log_every = 25
    cfg.sample.frames, cfg.sample.height, cfg.sample.width = 17, 64, 64
    # Guidance 2.5, not 4: on round 31's eight runs (nothing retrained) the draws in which an
    # object splits or changes colour fall with the scale, 22 / 13 / 7 / 3 / 1 / 0 / 0 of 288 at
    # 8 / 6 / 4 / 3.5 / 3 / 2.5 / 2, shape holds down to 2.5 (mean 99.5%) and drops at 2 (95.8%),
    # travel does not move (BENCHMARKS.md, round 32).
    cfg.sample.steps, cfg.sample.guidance = 20, 2.5
    return cfg


PRESETS: dict[str, Callable[[], SpacetimeConfig]] = {
    "default": default,
    "tiny": tiny,
    "demo": demo,
}


def get_preset(name: str) -> SpacetimeConfig:

    if name not in PRESETS:
        close = difflib.get_close_matches(name, list(PRESETS), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown preset '{name}'{hint} (presets: {', '.join(PRESETS)})")
    return PRESETS[name]()
