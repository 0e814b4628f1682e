"""Configuration of `spacetime train` (no torch import: the CLI and config loader read it).

The DeepSpeed dict is generated from these fields (trainer.engine.deepspeed_config), never written
by hand.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Literal

from trainer.diffusion.config import DDPMConfig, FlowConfig
from trainer.model.config import DiTConfig, LoraConfig
from trainer.sample_config import PreviewConfig

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
    "train.stages",
    "train.lora.",
)


@dataclass
class RunConfig:
    """Identity and placement of a run."""

    name: str = "default"
    """Run name; outputs go to {output_dir}/{name}."""
    output_dir: str = "runs"
    """Root folder (local path or s3:// URI) for run outputs."""
    seed: int = 0
    """Seed for every random choice the run makes."""
    log_level: str = "INFO"
    """Python logging level name for the entry point."""
    cache_dir: str = ".cache/spacetime"
    """Local scratch for runs whose output is on S3 (checkpoints are written here, then uploaded)."""

    def validate(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"name must be non-empty and contain no '/', got {self.name!r}")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError(f"log_level must be a logging level name, got {self.log_level!r}")


@dataclass
class DataSource:
    """One dataset of a weighted mixture (`train.data.sources`)."""

    latents: str = ""
    """Latent shards (output of `spacetime encode`) of this source."""
    weight: float = 1.0
    """Relative share of the samples drawn (normalised over the sources)."""
    name: str = ""
    """Shown in logs and the dry run (default: the folder name)."""


@dataclass
class StageConfig:
    """A change of recipe from step `start` on (`train.stages`); unset fields keep the previous
    stage's values (the first stage's are train.data and train.optim.lr)."""

    start: int = 0
    """Steps trained before this stage begins (>= 1, increasing): step start + 1 is its first."""
    name: str = ""
    sources: list[DataSource] = field(default_factory=list)
    """The data from this stage on (a weighted mixture); empty: keep."""
    latents: str = ""
    """Or one latent set from this stage on; empty: keep."""
    token_budget: int = 0
    """Tokens per micro-batch from this stage on; 0: keep."""
    max_latent_frames: int = 0
    """Samples with more latent frames than this are skipped in this stage (counted in the dry
    run); 0: no limit (or keep the previous stage's)."""
    max_latent_pixels: int = 0
    """Samples with a larger latent height x width are skipped in this stage; 0: as above."""
    lr: float = 0.0
    """Peak learning rate from this stage on (the schedule's shape is kept); 0: keep."""


@dataclass
class TrainDataConfig:
    latents: str = ""
    """Latent shards (output of `spacetime encode`), local folder or s3:// prefix."""
    sources: list[DataSource] = field(default_factory=list)
    """Instead of `latents`: a weighted mixture of latent sets. Each epoch-equivalent (as many
    samples as all sources hold together) draws weight-proportional samples from each source,
    going through each source in a fresh order per pass (a small source with a big weight is
    repeated, a big one with a small weight is seen over several epochs); the draw is a pure
    function of (seed, epoch), so exact resume and world-size changes hold."""
    clips: str = ""
    """Instead of `latents`: clip shards (output of `spacetime shard`), encoded on the fly with
    `vae` and the text encoder (trainer/data/raw.py)."""
    captions: str = ""
    """With `clips`: a caption set (`spacetime recaption` output); clips without one use their own."""
    vae: str = ""
    """With `clips`: the VAE directory (config.json + model.safetensors)."""
    text_encoder: str | None = None
    """With `clips`: a local text encoder directory (default: MiniLM, as `encode`)."""
    text_max_length: int = 128
    max_frames: int = 257
    """With `clips`: longer clips are cut to this many frames (as `encode`)."""
    token_budget: int = 4096
    """Most video tokens in one micro-batch (samples longer than this travel alone)."""
    microbatches_per_step: int = 2
    """Micro-batches in one optimizer step across all ranks (the global batch). Fixed across world
    sizes: each rank runs microbatches_per_step / world_size of them (gradient accumulation), so
    resuming on another world size trains on exactly the same batches."""
    shuffle_shards: int = 8
    """Shards shuffled together (window); samples are shuffled and packed within a window."""
    workers: int = 0
    """Reader processes per rank (0: read in the training process). Latents are cheap to read:
    inline reading cost 0.6% of a step on a 2-core machine, where a reader process competing for
    the cores cost 11% (bench/train.py); use 1-2 on many-core nodes reading from S3."""
    caption_dropout: float = 0.1
    """Fraction of samples trained without text (for classifier-free guidance)."""
    token_drop: float = 0.0
    """NaViT token dropping: fraction of each sample's tokens dropped in training."""
    balance: Literal["cost", "tokens"] = "cost"
    """How micro-batches are spread across ranks: by compute cost (tokens and sum of L^2) or tokens."""

    def validate(self) -> None:
        if sum(map(bool, (self.latents, self.clips, self.sources))) > 1:
            raise ValueError(
                "train.data: set one of latents (cached), clips (encoded on the fly) or sources "
                "(a weighted mixture of latent sets)"
            )
        for i, src in enumerate(self.sources):
            if not src.latents or src.weight < 0:
                raise ValueError(f"train.data.sources[{i}]: needs latents and a weight >= 0")
        if self.sources and not sum(s.weight for s in self.sources) > 0:
            raise ValueError("train.data.sources: the weights sum to 0")
        if self.clips and not self.vae:
            raise ValueError("train.data.clips needs train.data.vae (the VAE to encode them with)")
        if self.token_budget < 1 or self.microbatches_per_step < 1 or self.shuffle_shards < 1:
            raise ValueError("token_budget, microbatches_per_step and shuffle_shards must be >= 1")
        if not 0 <= self.caption_dropout < 1 or not 0 <= self.token_drop < 1:
            raise ValueError("caption_dropout and token_drop must be in [0, 1)")
        if self.workers < 0 or self.text_max_length < 1 or self.max_frames < 1:
            raise ValueError("workers must be >= 0, text_max_length and max_frames >= 1")


@dataclass
class ParallelConfig:
    sequence: int = 1
    """Sequence-parallel degree P: the world is DP x SP, SP groups are consecutive ranks (one node
    on GPU), every rank of a group runs the same micro-batches, each on 1/P of every pack's tokens
    (Ulysses all-to-all around self-attention). The model's head count must divide by P."""
    device_memory_gb: float = 80.0
    """For `--dry-run` only: the memory of one device the predicted bytes per rank must fit."""
    assumed_mfu: float = 0.4
    """For `--dry-run` only: the model FLOPs utilisation its step time is predicted at."""

    def validate(self) -> None:
        if self.sequence < 1:
            raise ValueError(f"parallel.sequence must be >= 1, got {self.sequence}")
        if not self.device_memory_gb > 0 or not 0 < self.assumed_mfu <= 1:
            raise ValueError("parallel.device_memory_gb must be > 0 and assumed_mfu in (0, 1]")


@dataclass
class OptimConfig:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    eps: float = 1e-8
    warmup_steps: int = 100
    """Linear warmup from 0."""
    schedule: Literal["constant", "cosine"] = "constant"
    """After warmup: constant, or cosine decay to min_lr_ratio·lr at the last step."""
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    """Global gradient-norm clipping (0: off)."""
    name: Literal["adamw", "muon"] = "adamw"
    """muon: Muon on the transformer blocks' matrices, AdamW on the rest (trainer/muon.py; its
    lr is scaled to AdamW's update size, so `lr` serves both). Needs zero_stage 0."""
    muon_momentum: float = 0.95

    def validate(self) -> None:
        if not math.isfinite(self.lr) or self.lr <= 0:
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if self.warmup_steps < 0 or not self.weight_decay >= 0 or not self.grad_clip >= 0:
            raise ValueError("warmup_steps, weight_decay and grad_clip must be >= 0")
        if not self.eps > 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("eps must be > 0 and min_lr_ratio in [0, 1]")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be in [0, 1), got {self.betas}")


@dataclass
class GuardConfig:
    enabled: bool = True
    """Skip non-finite steps (and spikes, with spike_factor > 0) instead of applying them."""
    spike_factor: float = 10.0
    """A step whose loss or gradient norm exceeds this many times the median of the last
    `median_window` applied steps is skipped (0: only non-finite values are)."""
    median_window: int = 100
    min_history: int = 20
    """Spikes are judged only once this many applied steps are in the window, and only after the
    learning-rate warm-up (train.optim.warmup_steps; non-finite values always)."""
    max_skips: int = 3
    skip_window: int = 50
    """`max_skips` skips within this many steps roll the run back to its last checkpoint."""
    max_rollbacks: int = 3
    """More rollbacks than this in one run end it (the data or the settings need a look)."""

    def validate(self) -> None:
        if not self.spike_factor >= 0 or (self.spike_factor and self.spike_factor <= 1):
            raise ValueError(f"train.guard.spike_factor must be 0 or > 1, got {self.spike_factor}")
        if min(self.median_window, self.min_history, self.max_skips, self.skip_window) < 1:
            raise ValueError("train.guard windows, min_history and max_skips must be >= 1")
        if self.max_rollbacks < 0:
            raise ValueError("train.guard.max_rollbacks must be >= 0")


@dataclass
class ValidationConfig:
    every: int = 0
    """Compute the held-out loss every N steps (0: off)."""
    latents: str = ""
    """Held-out clips: a latents dataset (`spacetime encode` output) not in train.data."""
    timesteps: int = 8
    """Equidistant timesteps of the fixed grid (flow: t = (i + 0.5) / n; DDPM: integer steps)."""
    max_clips: int = 64
    """Use the first N clips of the held-out set (0: all)."""

    def validate(self) -> None:
        if self.every < 0 or self.timesteps < 1 or self.max_clips < 0:
            raise ValueError("train.validation: every >= 0, timesteps >= 1, max_clips >= 0")
        if self.every and not self.latents:
            raise ValueError("train.validation.every needs train.validation.latents")


@dataclass
class TrainConfig:
    model: DiTConfig = field(default_factory=DiTConfig)
    objective: Literal["flow", "ddpm"] = "flow"
    flow: FlowConfig = field(default_factory=FlowConfig)
    ddpm: DDPMConfig = field(default_factory=DDPMConfig)
    data: TrainDataConfig = field(default_factory=TrainDataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    steps: int = 1000
    """Optimizer steps to train in total (a resumed run continues to this number)."""
    zero_stage: int = 2
    """DeepSpeed ZeRO stage 0-3."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """auto: bf16 on GPU, fp32 on CPU."""
    bucket_elements: int = 0
    """Elements per ZeRO communication bucket (gradient reduce, all-gather, ZeRO-3 prefetch and
    live parameters). 0: a quarter of the model's parameters, between 1M and DeepSpeed's 500M
    default; smaller saves memory, larger overlaps communication better. DeepSpeed allocates a
    flat buffer of this size per rank, so its fixed 500M default costs a small model 2 GB."""
    host_heap_retain: bool = True
    """Keep freed host memory in the heap for reuse (glibc): else each step page-faults its large
    tensors in again (DiT-S steps 1.05x, DiT-B 1.31x slower on CPU). infra/host_heap.py."""
    offload_optimizer: bool = False
    """ZeRO-Offload of optimizer states to CPU (stage >= 1)."""
    activation_checkpointing: bool = False
    """Recompute each DiT block in the backward pass (less memory, ~1.3x compute)."""
    loss_averaging: Literal["token", "sample"] = "token"
    """Every token weighs the same, or every sample; normalised over the global batch."""
    ema_decay: float = 0.999
    """EMA of the weights (0: off)."""
    ema_warmup: bool = True
    """Ramp the EMA decay up as (1 + step) / (10 + step) until it reaches ema_decay, so early
    steps (random weights) leave the average quickly."""
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    """Keep the newest N checkpoints (0: keep all)."""
    log_every: int = 10
    watchdog_s: float = 0.0
    """Abort a rank that makes no step progress for this long (0: off). Gloo/NCCL collectives can
    hang far past their timeouts when a peer is frozen; set it above the slowest step plus a
    checkpoint save."""
    dist_timeout_s: float = 600.0
    """Timeout of the process group's collectives and rendezvous (a dead peer is caught by it)."""
    save_timeout_s: float = 10800.0
    """How long ranks wait for each other around a checkpoint save (uploads to S3 included);
    separate from dist_timeout_s, which a long upload must not trip."""
    time_limit_s: float = 0.0
    """Stop this launch at the step boundary before this many seconds from the trainer's start
    (its setup counted, the interpreter's imports not) run out, checkpoint that step and exit 0,
    so `--resume auto` continues (0: off). Leave a margin for the last save and the exit."""
    stop_at: float = 0.0
    """The same at a Unix time, e.g. Slurm's $SLURM_JOB_END_TIME less a margin (0: off)."""
    peak_tflops: float = 0.0
    """Peak of one device for MFU (0: measured with a matmul on CPU; 989 for H100 bf16 dense)."""
    preview: PreviewConfig = field(default_factory=PreviewConfig)
    checkpoint_async: bool = False
    """Snapshot the state to host memory and write, upload and publish it in a background thread
    while training goes on (at most one save in flight; trainer/saving.py)."""
    guard: GuardConfig = field(default_factory=GuardConfig)
    """Skip non-finite or spiking steps; roll back when they cluster (trainer/guard.py)."""
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    """Held-out loss at fixed timesteps and noise (trainer/validation.py)."""
    stages: list[StageConfig] = field(default_factory=list)
    """Recipe changes at given steps (data, token budget, resolution/duration limits, learning
    rate): trainer/data/stages.py."""
    init: str = ""
    """Fine-tuning: a new run starts from these weights (run dir, checkpoint or exported folder)
    instead of a random initialisation; the optimizer starts afresh. Ignored on --resume."""
    init_weights: Literal["ema", "model"] = "ema"
    """Which weights of `init`: its EMA (what it samples with; the raw weights when it has none)
    or its raw weights."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """Fine-tune low-rank adapters on `init`'s frozen weights instead of every weight: only the
    adapters train, and checkpoints hold only them (the base is read from `init` again)."""

    def peak_lr(self, step: int) -> float:
        """The peak learning rate after `step` finished steps: the last stage begun with an lr of
        its own, else optim.lr."""
        lr = self.optim.lr
        for st in self.stages:
            if st.start <= step and st.lr:
                lr = st.lr
        return lr

    def validate(self) -> None:
        if self.preview.every and self.preview.every % self.checkpoint_every:
            raise ValueError(
                f"train.preview.every ({self.preview.every}) must be a multiple of "
                f"train.checkpoint_every ({self.checkpoint_every}): previews sample a saved checkpoint"
            )
        if self.preview.every and not (self.preview.vae or self.data.vae):
            raise ValueError("train.preview.every needs train.preview.vae (or train.data.vae)")
        self.guard.validate()
        self.validation.validate()
        self.lora.validate()
        if not self.flow.foreground_weight >= 0:
            raise ValueError(
                f"train.flow.foreground_weight must be >= 0, got {self.flow.foreground_weight}"
            )
        if not 0 <= self.flow.contrastive < 1:
            raise ValueError(
                f"train.flow.contrastive must be in [0, 1), got {self.flow.contrastive}"
            )
        if self.flow.contrastive and (self.parallel.sequence > 1 or self.data.token_drop > 0):
            raise ValueError(
                "train.flow.contrastive pairs whole samples' tokens by position: it cannot run "
                "with sequence parallelism or token dropping"
            )
        if self.model.self_condition and self.objective != "flow":
            raise ValueError("train.model.self_condition needs train.objective flow")
        if self.model.conv_head and (self.parallel.sequence > 1 or self.data.token_drop > 0):
            # The convolution needs each sample's whole grid of tokens on one rank.
            raise ValueError(
                "train.model.conv_head works without sequence parallelism and token dropping"
            )
        if not self.flow.sigma_data > 0:  # also refuses NaN
            raise ValueError(f"train.flow.sigma_data must be > 0, got {self.flow.sigma_data}")
        starts = [st.start for st in self.stages]
        if starts and (starts[0] < 1 or any(b <= a for a, b in itertools.pairwise(starts))):
            raise ValueError(f"train.stages: starts must be >= 1 and increasing, got {starts}")
        if self.stages and self.data.clips:
            raise ValueError("train.stages work on cached latents (data.latents or data.sources)")
        for i, st in enumerate(self.stages):
            if st.sources and st.latents:
                raise ValueError(f"train.stages[{i}]: set sources or latents, not both")
            if min(st.token_budget, st.max_latent_frames, st.max_latent_pixels, st.lr) < 0:
                raise ValueError(f"train.stages[{i}]: limits and lr must be >= 0")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        if self.steps < 1 or self.checkpoint_every < 1 or self.log_every < 1:
            raise ValueError("steps, checkpoint_every and log_every must be >= 1")
        if self.optim.name == "muon" and (self.zero_stage or self.offload_optimizer):
            raise ValueError(
                "train.optim.name=muon needs zero_stage 0 (ZeRO flattens the weight matrices "
                "that Muon orthogonalises) and no offload_optimizer"
            )
        if self.offload_optimizer and self.zero_stage == 0:
            raise ValueError("offload_optimizer needs zero_stage >= 1")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.keep_checkpoints < 0 or self.bucket_elements < 0 or not self.watchdog_s >= 0:
            raise ValueError("keep_checkpoints, bucket_elements and watchdog_s must be >= 0")
        if not self.dist_timeout_s > 0 or not self.save_timeout_s > 0 or not self.peak_tflops >= 0:
            raise ValueError("dist_timeout_s and save_timeout_s must be > 0, peak_tflops >= 0")
        if not self.time_limit_s >= 0 or not self.stop_at >= 0:
            raise ValueError("time_limit_s and stop_at must be >= 0 (0: off)")
