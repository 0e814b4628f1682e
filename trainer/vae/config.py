"""Configuration of the spacetime VAE and its training (no heavy imports: the CLI loads it)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from trainer.lr_schedule import cosine_decay

SIZES: dict[str, dict[str, object]] = {
    "tiny": {"base_channels": 16, "latent_channels": 4, "layers_per_block": 1},
    "S": {"base_channels": 64, "latent_channels": 16, "layers_per_block": 2},
    "B": {"base_channels": 128, "latent_channels": 16, "layers_per_block": 2},
}


@dataclass
class VAEConfig:
    size: str = "tiny"
    """Named size (tiny, S, B): sets the three fields below unless they are given."""
    in_channels: int = 3
    base_channels: int = 16
    """Width of the first level; levels use base x channel_mults."""
    latent_channels: int = 4
    layers_per_block: int = 1
    channel_mults: tuple[int, ...] = (1, 2, 2, 4)
    """One entry per level; a 2x spatial downsample between levels (four levels: 8x)."""
    temporal_down: tuple[bool, ...] = (True, True, False)
    """Which downsamples (one fewer than levels) also halve time (two: 4x)."""
    temporal_resample: Literal["average", "learned"] = "average"
    """How time is halved and doubled: average pairs of frames and repeat them, or stack a pair
    on channels and mix it with a 1x1 conv (and the reverse), which keeps motion within a pair."""
    patch_size: int = 1
    """Pixels per side folded into channels before the first convolution and unfolded after the
    last (space-to-depth, as Wan 2.2's and LTX-Video's VAEs do), so no convolution runs at full
    resolution, where a small VAE spends most of its time (the demo VAE's decoder: 2/3 of its
    FLOPs, most at full resolution)."""
    latent_mean: list[float] = field(default_factory=list)
    """Per-channel shift for normalising latents (set by train-vae; empty: 0)."""
    latent_std: list[float] = field(default_factory=list)
    """Per-channel scale for normalising latents (empty: 1)."""

    @classmethod
    def named(cls, size: str, **overrides: object) -> VAEConfig:
        if size not in SIZES:
            raise ValueError(f"VAE size must be one of {', '.join(SIZES)}, got {size!r}")
        return cls(size=size, **{**SIZES[size], **overrides})  # type: ignore[arg-type]

    def validate(self) -> None:
        if len(self.temporal_down) != len(self.channel_mults) - 1:
            raise ValueError("temporal_down needs one entry per downsample (levels - 1)")
        if self.patch_size not in (1, 2, 4):
            raise ValueError(f"patch_size must be 1, 2 or 4, got {self.patch_size}")

    @property
    def time_stride(self) -> int:
        return 2 ** sum(self.temporal_down)

    @property
    def space_stride(self) -> int:
        return self.patch_size * 2 ** (len(self.channel_mults) - 1)


@dataclass
class VAETrainConfig:
    size: str = "tiny"
    """VAE size (trainer.vae.model.SIZES)."""
    steps: int = 300
    batch_size: int = 4
    lr: float = 1e-3
    schedule: Literal["constant", "cosine"] = "constant"
    """constant, or cosine decay from `lr` to min_lr_ratio·lr at the last step. At a constant
    rate the weights kept are the last step's, spike or not (one demo VAE's loss rose 5x in its
    last 12 steps: BENCHMARKS.md, issue 20 round 32)."""
    min_lr_ratio: float = 0.1
    kl_weight: float = 1e-6
    """Weight of the KL term (small: the latent should stay informative)."""
    temporal_weight: float = 0.1
    """Weight of an L1 loss on frame-to-frame differences (motion fidelity)."""
    spatial_weight: float = 0.0
    """Weight of an L1 loss on neighbouring pixels' differences along H and W (edge sharpness:
    MSE alone rounds a small object's corners, which carry a square's shape)."""
    foreground_weight: float = 1.0
    """Weight of the reconstruction error on pixels that differ from their crop's median colour
    (its background) against 1 elsewhere; the error is renormalised by the mean weight. A small
    object on a plain background is a few percent of the pixels: the demo's 8x VAE decoded
    some colours wrong (blue as cyan, red as yellow) in 5 of 9 trainings at weight 1 and in 1 of
    6 at weight 4, whose outlines came out softer at 1200 steps (BENCHMARKS.md, round 16)."""
    foreground_margin: int = 0
    """Background pixels within this many pixels of the object weighted as the object (an
    outline's halo). 2 was tried on the demo's 8x VAE: colour wrong in all 3 trainings."""
    frames: int = 5
    """Frames per training crop (1 + k x time_stride)."""
    long_frames: int = 0
    """Frames per crop on every `long_every`-th step (0: none; 1 + k x time_stride, > frames).
    Every convolution is causal and pads a clip's start with its first frame, so in a short crop
    every output frame sees that padding; past the crop's length (a whole clip at encode time) the
    frames see only real past frames, a case never trained: the demo's VAE on 5-frame crops
    turned red objects yellow or cyan ones blue from frame ~6 of a 17-frame sample. A share of
    long crops teaches those frames at a fraction of long crops' cost (BENCHMARKS.md, round 27)."""
    long_every: int = 4
    """With long_frames: one step in this many uses long crops."""
    crop: int = 64
    """Square crop side in pixels (a multiple of 8)."""
    content_crops: float = 0.0
    """Share of crops centred on a pixel that differs from its clip's median colour (a moving
    object on a plain background) rather than placed uniformly. A uniform 32-pixel crop of a
    small object's 64-96-pixel frame holds the whole object only now and then and often none of
    it; an outline's corners and apexes are where a small VAE blurs first."""
    holdout: int = 4
    """Clips held out for PSNR (chosen by key hash, so stable across runs)."""
    seed: int = 0
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    zero_stage: int = 1
    """DeepSpeed ZeRO stage 0-2 (the VAE is small; stage 3 would only add gathers)."""
    grad_clip: float = 0.0
    """Gradient clipping by global norm (0: off)."""
    space_stride: int = 8
    """Spatial compression, 2, 4, 8 or 16. Small objects in small frames (the shapes demo)
    reconstruct far sooner at 4x than at 8x; 2x reconstructs them best, but a DiT on its latents
    needs 4x wider patches for the same tokens, and learned the demo slower (BENCHMARKS.md)."""
    recon_loss: Literal["l1", "mse"] = "l1"
    """Reconstruction loss. On mostly-flat frames L1's optimum is the background colour; MSE
    penalises a missing small object more and learned the shapes demo's objects where L1 did not."""

    temporal_resample: Literal["average", "learned"] = "average"
    """VAEConfig.temporal_resample: "learned" keeps a small moving object sharp where averaging
    leaves ghost trails (BENCHMARKS.md, demo quality)."""
    time_stride: int = 4
    """Temporal compression, 1, 2 or 4. A small VAE at 4x smears an object that moves a few
    pixels per frame into ghost trails; 2x keeps it at the cost of twice the latent frames."""
    patch: int = 1
    """VAEConfig.patch_size: pixels per side folded into channels first; it replaces the first
    downsamples. The first level keeps the size's base width at 1/patch the size, where a
    convolution costs 1/patch^2 as much (the tiny VAE at 4x with 2: 16 channels at 1/2 size, 64
    at 1/4, half the FLOPs of 16, 32 and 64 at 1, 1/2 and 1/4)."""
    latent_channels: int = 0
    """Latent channels (0: the size's own). More channels carry sharper outlines at a given
    stride; the DiT's input width follows (train.model.in_channels 0 reads it from the latents)."""
    host_heap_retain: bool = True
    """Keep freed host memory in the heap for reuse (infra/host_heap.py): 300 demo VAE steps on
    a 2-core CPU took ~14% less time, with 0.17M page faults instead of 1.9-2.9M."""

    def vae_config(self) -> VAEConfig:
        levels = {2: 1, 4: 2, 8: 3, 16: 4}[self.space_stride]
        mults = (1, 2, 2, 4, 4)[: levels + 1] if levels > 2 else (1, 2, 4)[: levels + 1]
        folded = {1: 0, 2: 1, 4: 2}[self.patch]
        mults, levels = mults[:1] + mults[1 + folded :], levels - folded
        more: dict[str, object] = {"temporal_resample": self.temporal_resample}
        if self.latent_channels:
            more["latent_channels"] = self.latent_channels
        halvings = {1: 0, 2: 1, 4: 2}[self.time_stride]
        return VAEConfig.named(
            self.size,
            patch_size=self.patch,
            channel_mults=mults,
            temporal_down=tuple(i < halvings for i in range(levels)),
            **more,
        )

    def lr_factor(self, step: int) -> float:
        """The rate at `step` (0-based) as a fraction of `lr`."""
        if self.schedule == "constant":
            return 1.0
        return cosine_decay(step / max(1, self.steps - 1), self.min_lr_ratio)

    def validate(self) -> None:
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"vae_train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.zero_stage not in (0, 1, 2):
            raise ValueError(f"vae_train.zero_stage must be 0, 1 or 2, got {self.zero_stage}")
        if self.space_stride not in (2, 4, 8, 16):
            raise ValueError(f"space_stride must be 2, 4, 8 or 16, got {self.space_stride}")
        if self.time_stride not in (1, 2, 4):
            raise ValueError(f"time_stride must be 1, 2 or 4, got {self.time_stride}")
        # Time is halved only where space is: one downsample for each halving.
        if self.patch not in (1, 2, 4) or self.patch * self.time_stride > self.space_stride:
            raise ValueError(
                f"patch must be 1, 2 or 4, with patch x time_stride ({self.time_stride}) at most "
                f"space_stride ({self.space_stride}), got {self.patch}"
            )
        if (
            self.frames < 1
            or (self.frames - 1) % self.time_stride
            or self.crop % 8
            or self.crop < 8
        ):
            raise ValueError(
                f"frames must be 1 + {self.time_stride}k and crop a multiple of 8, got "
                f"{self.frames}, {self.crop}"
            )
        if self.long_frames and (
            self.long_frames <= self.frames or (self.long_frames - 1) % self.time_stride
        ):
            raise ValueError(
                f"long_frames must be 0 or 1 + {self.time_stride}k above frames ({self.frames}), "
                f"got {self.long_frames}"
            )
        if min(self.steps, self.batch_size, self.checkpoint_every, self.long_every) < 1:
            raise ValueError("steps, batch_size, checkpoint_every and long_every must be >= 1")
        if not math.isfinite(self.lr) or self.lr <= 0:
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if not 0 <= self.content_crops <= 1:
            raise ValueError(f"content_crops must be in [0, 1], got {self.content_crops}")
        if not self.foreground_weight >= 1:
            raise ValueError(f"foreground_weight must be >= 1, got {self.foreground_weight}")
        if (
            min(self.keep_checkpoints, self.holdout, self.latent_channels, self.foreground_margin)
            < 0
        ):
            raise ValueError(
                "keep_checkpoints, holdout, latent_channels and foreground_margin must be >= 0"
            )
        if not self.grad_clip >= 0:  # also refuses NaN
            raise ValueError(f"grad_clip must be >= 0, got {self.grad_clip}")


@dataclass
class EncodeConfig:
    chunk_latent_frames: int = 4
    """Latent frames per temporal chunk (exact; bounds memory for long clips)."""
    tile: int = 0
    """Spatial tile in pixels for large clips (0: no spatial tiling)."""
    max_frames: int = 257
    """Longer clips are cut to at most this many frames (then to 1 + k x the VAE's time stride)
    before encoding."""
    text_max_length: int = 128
    """Caption tokens kept."""

    def validate(self) -> None:
        if (
            min(self.chunk_latent_frames, self.max_frames, self.text_max_length) < 1
            or self.tile < 0
        ):
            raise ValueError(
                "chunk_latent_frames, max_frames and text_max_length must be >= 1, tile >= 0"
            )
