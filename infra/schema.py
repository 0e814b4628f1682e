"""The top-level configuration: one section per stage, each defined beside the code it configures."""

from __future__ import annotations

from dataclasses import dataclass, field

from data_pipeline.config import ShardConfig
from infra.storage import StorageConfig
from recaption.config import RecaptionConfig
from trainer.config import SampleConfig, TrainConfig
from trainer.vae.config import EncodeConfig, VAETrainConfig


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
class DemoConfig:
    """`spacetime demo` only."""

    videos: int = 192
    """Shapes videos generated (held-out combinations excluded)."""
    eval_prompts: int = 24
    """Prompts sampled and scored at the end (the held-out combinations among them)."""


@dataclass
class SpacetimeConfig:
    """Everything a spacetime job reads. Each job uses its own sections and ignores the rest."""

    run: RunConfig = field(default_factory=RunConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    shard: ShardConfig = field(default_factory=ShardConfig)
    recaption: RecaptionConfig = field(default_factory=RecaptionConfig)
    vae_train: VAETrainConfig = field(default_factory=VAETrainConfig)
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
