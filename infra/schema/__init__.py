"""The top-level configuration (the CLI's schema): one section per stage, each defined beside the
code it configures."""

from __future__ import annotations

from dataclasses import dataclass, field

from data_pipeline.config import CurateConfig, ShardConfig
from infra.storage_config import StorageConfig
from recaption.config import RecaptionConfig
from trainer.config import RunConfig, TrainConfig
from trainer.sample_config import SampleConfig
from trainer.vae.config import EncodeConfig, VAETrainConfig


@dataclass
class DemoConfig:
    """`spacetime demo` only."""

    videos: int = 192
    """Shapes videos generated (held-out combinations excluded)."""
    eval_prompts: int = 24
    """Prompts sampled and scored at the end (the held-out combinations among them)."""
    held_out_draws: int = 3
    """Samples drawn of each held-out combination, from different noise: its accuracy over 6
    samples moves in steps of 17 points, over 18 in steps of 6."""
    steps: int = 0
    """DiT training steps (0: as many as fit in --minutes). A fixed count compares runs across
    machines of different speeds: e.g. 450 is what a 110 GFLOP/s 2-core machine fits in 20 min."""


@dataclass
class SpacetimeConfig:
    """Everything a spacetime job reads. Each job uses its own sections and ignores the rest."""

    run: RunConfig = field(default_factory=RunConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    shard: ShardConfig = field(default_factory=ShardConfig)
    curate: CurateConfig = field(default_factory=CurateConfig)
    recaption: RecaptionConfig = field(default_factory=RecaptionConfig)
    vae_train: VAETrainConfig = field(default_factory=VAETrainConfig)
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
