"""Streaming loader of cached latents for the trainer: follows the plan (trainer.data.plan).

Each rank reads only the shards that hold its samples, in the order it needs them, split across
reader processes (torch DataLoader workers, shard j to worker j mod n) so decoding overlaps the
training step. Samples wait in memory until their step comes; because a shard's samples are all used
within its shuffle window, that is at most about one window of samples. Local or S3 shards.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from safetensors.torch import load
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from infra.shards import iter_samples
from infra.storage import Storage
from trainer.config import TrainConfig, TrainDataConfig
from trainer.data.mixture import epoch_entries, mixture_index
from trainer.data.plan import (
    EpochPlan,
    Index,
    assign_ranks,
    load_index,
    plan_epoch,
    sample_cost,
    tokens_of,
)
from trainer.data.raw import ClipEncoder, clip_index
from trainer.model.config import DiTConfig
from trainer.vae.pretrained import vae_identity, vae_info

log = logging.getLogger(__name__)


@dataclass
class Sample:
    key: str
    latent: torch.Tensor
    """(C, T, H, W) normalised latent."""
    text: torch.Tensor
    """(L, D) caption token states."""


@dataclass
class StepData:
    epoch: int
    step_in_epoch: int
    microbatches: list[list[Sample]]
    """This rank's micro-batches of the step (microbatches_per_step / world_size of them)."""
    microbatch_ids: list[int]
    """Their positions among the step's G micro-batches (seeds noise independently of rank)."""
    step_lengths: list[int]
    """Token count of every sample of the step on all ranks (the loss normaliser's source)."""
    global_samples: int

    @property
    def global_tokens(self) -> int:
        """Video tokens of the whole step on all ranks."""
        return sum(self.step_lengths)


class _ShardReader(IterableDataset):
    """Yields (shard position, [Sample]) for the wanted keys of each shard, worker-split."""

    def __init__(
        self,
        shards: list[str],
        wanted: list[dict[str, tuple[int, ...]]],
        storage: Storage,
        encoder: Any = None,
    ):
        """`wanted`: per shard, key -> planned latent shape. `encoder`: a trainer.data.raw
        ClipEncoder when the shards are clip shards, None for latent shards."""
        self.shards, self.wanted, self.storage, self.encoder = shards, wanted, storage, encoder

    def _sample(self, shard: str, s: dict[str, Any], shape: tuple[int, ...]) -> Sample:
        if self.encoder is not None:
            return Sample(s["__key__"], *self.encoder(shard, s, shape))
        return Sample(
            s["__key__"],
            load(s["latent.safetensors"])["latent"],
            load(s["text.safetensors"])["tokens"],
        )

    def __iter__(self) -> Iterator[tuple[int, list[Sample]]]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        if info is not None:
            torch.set_num_threads(1)  # readers must not compete with the training step for cores
        for j, (shard, keys) in enumerate(zip(self.shards, self.wanted, strict=True)):
            if j % nw != wid:
                continue
            out = [
                self._sample(shard, s, keys[s["__key__"]])
                for s in iter_samples(shard, self.storage)
                if s["__key__"] in keys
            ]
            missing = set(keys) - {s.key for s in out}
            if missing:
                raise FileNotFoundError(
                    f"{shard}: {len(missing)} samples of the index are missing from the shard "
                    f"(e.g. {sorted(missing)[0]}); was it rewritten after encoding?"
                )
            yield j, out


class LatentLoader:
    """Iterates StepData for one rank from a position (epoch, step_in_epoch), epoch after epoch."""

    def __init__(
        self,
        index: Index,
        storage: Storage,
        *,
        rank: int,
        world_size: int,
        seed: int,
        patch: tuple[int, int, int],
        token_budget: int,
        microbatches_per_step: int,
        shuffle_shards: int,
        workers: int,
        hidden: int,
        balance: str = "cost",
        encoder: Any = None,
    ):
        self.index, self.storage = index, storage
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.patch, self.budget, self.g = patch, token_budget, microbatches_per_step
        self.shuffle_shards, self.workers, self.hidden, self.balance = (
            shuffle_shards,
            workers,
            hidden,
            balance,
        )
        self.encoder = encoder
        self.lengths = [tokens_of(e.shape, patch) for e in index.entries]
        if self.g % world_size:
            raise ValueError(
                f"data.microbatches_per_step ({self.g}) must be divisible by the world size "
                f"({world_size})"
            )

    def plan(self, epoch: int) -> EpochPlan:
        chosen = (
            epoch_entries(self.index, epoch, self.seed)
            if self.index.source_of is not None
            else None
        )
        p = plan_epoch(
            self.index,
            epoch,
            self.seed,
            self.patch,
            self.budget,
            self.g,
            self.shuffle_shards,
            chosen,
        )
        if not p.steps:
            raise ValueError(
                f"the data fill no optimizer step: {len(self.index.entries)} samples pack into "
                f"fewer than microbatches_per_step={self.g} micro-batches of {self.budget} tokens"
            )
        return p

    def rank_microbatches(self, step: list[list[int]]) -> list[int]:
        def cost(mb: list[int]) -> float:
            if self.balance == "tokens":
                return float(sum(self.lengths[i] for i in mb))
            return sum(sample_cost(self.lengths[i], self.hidden) for i in mb)

        return assign_ranks([cost(mb) for mb in step], self.world_size)[self.rank]

    def iterate(self, epoch: int, step_in_epoch: int) -> Iterator[StepData]:
        while True:
            plan = self.plan(epoch)
            if step_in_epoch < len(plan.steps):
                yield from self._epoch(plan, step_in_epoch)
            epoch, step_in_epoch = epoch + 1, 0

    def _epoch(self, plan: EpochPlan, start: int) -> Iterator[StepData]:
        mine = [(s, self.rank_microbatches(plan.steps[s])) for s in range(start, len(plan.steps))]
        shard_order: list[int] = []
        wanted: dict[int, dict[str, tuple[int, ...]]] = {}
        for s, mbs in mine:
            for m in mbs:
                for i in plan.steps[s][m]:
                    e = self.index.entries[i]
                    if e.shard not in wanted:
                        shard_order.append(e.shard)
                        wanted[e.shard] = {}
                    wanted[e.shard][e.key] = e.shape
        reader = _ShardReader(
            [self.index.shards[j] for j in shard_order],
            [wanted[j] for j in shard_order],
            self.storage,
            self.encoder,
        )
        stream: Any = (
            DataLoader(
                reader,
                batch_size=None,
                num_workers=self.workers,
                prefetch_factor=2,
                multiprocessing_context="fork",
            )
            if self.workers > 0
            else reader
        )
        arrived: dict[tuple[int, str], Sample] = {}
        # A mixture can draw one sample more than once in an epoch: it is read once and handed
        # out as often as the plan uses it.
        uses = Counter(
            (self.index.entries[i].shard, self.index.entries[i].key)
            for s, mbs in mine
            for m in mbs
            for i in plan.steps[s][m]
        )

        def take(i: int) -> Sample:
            e = self.index.entries[i]
            uses[(e.shard, e.key)] -= 1
            if uses[(e.shard, e.key)]:
                return arrived[(e.shard, e.key)]
            return arrived.pop((e.shard, e.key))

        it = iter(stream)
        for s, mbs in mine:
            need = [
                (self.index.entries[i].shard, self.index.entries[i].key)
                for m in mbs
                for i in plan.steps[s][m]
            ]
            while any(n not in arrived for n in need):
                j, samples = next(it)
                for smp in samples:
                    arrived[(shard_order[j], smp.key)] = smp
            yield StepData(
                epoch=plan.epoch,
                step_in_epoch=s,
                microbatches=[[take(i) for i in plan.steps[s][m]] for m in mbs],
                microbatch_ids=mbs,
                step_lengths=[self.lengths[i] for mb in plan.steps[s] for i in mb],
                global_samples=plan.step_samples(s),
            )


def adopt_latent_space(model: DiTConfig, index: Index, preview_vae: str = "") -> None:
    """The model's input follows its data: in_channels 0 becomes the latents' channels, and the
    latent space is the tag of the VAE that made them; a setting that contradicts the data, or a
    preview VAE other than the data's, is an error naming both."""
    c = index.entries[0].shape[0]
    if model.in_channels == 0:
        model.in_channels = c
    elif model.in_channels != c:
        raise ValueError(
            f"train.model.in_channels is {model.in_channels} but the latents have {c} channels; "
            f"leave it at 0 (from the latents) or set --set train.model.in_channels={c}"
        )
    if not model.latent_space:
        model.latent_space = index.vae
    elif index.vae and model.latent_space != index.vae:
        raise ValueError(
            f"the model learns latents of {model.latent_space} (train.model.latent_space) but "
            f"these latents were made by {index.vae}: latents of different VAEs never mix"
        )
    if preview_vae and model.latent_space:
        tag = vae_identity(preview_vae)["tag"]
        if tag != model.latent_space:
            raise ValueError(
                f"train.preview.vae {preview_vae} is {tag}, but the training latents were made by "
                f"{model.latent_space}: previews would decode them with the wrong VAE"
            )


def training_index(data: TrainDataConfig, storage: Storage) -> Index:
    """The plan's index: cached latent shards (`data.latents`), or clip shards encoded on the fly
    (`data.clips`, planned from their manifest with the VAE's strides)."""
    if data.clips:
        index = clip_index(data.clips, storage, vae_info(data.vae), data.max_frames)
        index.vae = vae_identity(data.vae)["tag"]
        return index
    if data.sources:
        return mixture_index(data.sources, storage)
    return load_index(data.latents, storage)


def build_loader(
    cfg: TrainConfig,
    index: Index,
    storage: Storage,
    rank: int,
    world: int,
    seed: int,
    encode: bool = True,
) -> LatentLoader:
    """This rank's loader for `cfg.data` (with the on-the-fly encoder for clip shards unless
    `encode` is off, as in a dry run that only plans)."""
    d = cfg.data
    encoder = None
    if d.clips and encode:
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
