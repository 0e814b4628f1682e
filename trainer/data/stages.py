"""Training stages (`train.stages`): the recipe changes at given steps (data, token budget,
resolution and duration limits, learning rate), as Wan and HunyuanVideo go image -> low -> high
resolution.

Each stage's settings are resolved by trainer/stage_config.py; here, each stage has its own data
plan, started afresh at its first step. Its epochs are numbered from k * STAGE_EPOCHS, so a data
position (epoch, step in epoch) names its stage too: a checkpoint's position resumes inside the
right stage's plan, the noise generators (seeded by epoch) differ between stages, and the step
guard's excluded windows never collide. The plans stay pure functions of (seed, epoch), so exact
resume and world-size changes hold in every stage.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

from infra.storage import Storage
from trainer.config import TrainConfig
from trainer.data.loader import build_loader, training_index
from trainer.data.plan import Index
from trainer.stage_config import Stage, stage_at, stages

STAGE_EPOCHS = 1_000_000


def limit(index: Index, stage: Stage) -> tuple[Index, int]:
    """The stage's index without the samples above its limits, and how many were skipped."""
    keep = [
        i
        for i, e in enumerate(index.entries)
        if (not stage.max_latent_frames or e.shape[1] <= stage.max_latent_frames)
        and (not stage.max_latent_pixels or e.shape[2] * e.shape[3] <= stage.max_latent_pixels)
    ]
    if len(keep) == len(index.entries):
        return index, 0
    if not keep:
        raise ValueError(
            f"train.stages: {stage.name} skips every sample (max_latent_frames "
            f"{stage.max_latent_frames}, max_latent_pixels {stage.max_latent_pixels})"
        )
    out = dataclasses.replace(index, entries=[index.entries[i] for i in keep])
    if index.source_of is not None:
        out.source_of = [index.source_of[i] for i in keep]
    return out, len(index.entries) - len(keep)


class StagedLoader:
    """The per-stage loaders behind one iterate(epoch, step_in_epoch), epochs offset by stage."""

    def __init__(self, cfg: TrainConfig, storage: Storage, make: Any, first_index: Index):
        """`make(stage_cfg, index)` builds a LatentLoader for a TrainConfig and an index."""
        self.cfg, self.storage, self.make = cfg, storage, make
        self.stages = stages(cfg)
        self.loaders: dict[int, Any] = {}
        self.skipped: dict[int, int] = {}
        self._first = first_index

    def index(self, k: int) -> Index:
        st = self.stages[k]
        base = self._first if k == 0 else training_index(st.data, self.storage)
        index, self.skipped[k] = limit(base, st)
        return index

    def loader(self, k: int) -> Any:
        if k not in self.loaders:
            cfg = dataclasses.replace(self.cfg, data=self.stages[k].data)
            self.loaders[k] = self.make(cfg, self.index(k))
        return self.loaders[k]

    def plan(self, epoch: int) -> Any:
        return self.loader(epoch // STAGE_EPOCHS).plan(epoch % STAGE_EPOCHS)

    def iterate(self, epoch: int, step_in_epoch: int) -> Iterator[Any]:
        k, base = epoch // STAGE_EPOCHS, (epoch // STAGE_EPOCHS) * STAGE_EPOCHS
        for data in self.loader(k).iterate(epoch - base, step_in_epoch):
            yield dataclasses.replace(data, epoch=data.epoch + base)


def run_loader(
    cfg: TrainConfig,
    index: Index,
    storage: Storage,
    rank: int,
    world: int,
    seed: int,
    encode: bool = True,
) -> Any:
    """The run's loader: a StagedLoader with `train.stages`, else the one LatentLoader. Every
    stage's latents must be in the run's latent space."""

    def make(c: TrainConfig, idx: Index) -> Any:
        space = cfg.model.latent_space
        if idx.vae and space and idx.vae != space:
            raise ValueError(
                f"train.stages: a stage's latents were made by {idx.vae}, the run's by {space}: "
                "latents of different VAEs never mix"
            )
        return build_loader(c, idx, storage, rank, world, seed, encode)

    return StagedLoader(cfg, storage, make, index) if cfg.stages else make(cfg, index)


def stage_entry(cfg: TrainConfig, step: int, epoch: int) -> int | None:
    """The stage whose plan must start now (its first epoch is stage * STAGE_EPOCHS), when the
    data position `epoch` is still in another stage's: a run that just crossed a boundary, or one
    resumed from the last checkpoint of the previous stage. None otherwise."""
    k = stage_at(cfg, step)
    return k if cfg.stages and epoch // STAGE_EPOCHS != k else None
