"""Held-out validation loss at fixed timesteps with fixed noise (`train.validation`).

A training loss mixes random timesteps and noise, so two of its values say little about each other.
This one is a fixed measurement (as in SD3-style recipes and MLPerf's text-to-image): each held-out
clip is packed once per timestep of a fixed grid (`timesteps` equidistant), the noise comes from a
generator seeded by (seed, clip), and the loss is averaged per timestep over the clips (each clip
weighs the same) and over the grid. Clip i is computed by rank i mod W; the per-clip values are
gathered and summed in clip order, so for the same weights the numbers are the same on any world
size, and a resumed run (bit-identical weights) reports the same numbers.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load

from infra.shards import iter_samples
from trainer.data.plan import load_index
from trainer.diffusion.common import per_sample
from trainer.model.packing import pack

# `tr` is a trainer.train.Trainer; not imported, even for type checking: that would be a cycle.
Trainer = Any

log = logging.getLogger("trainer.train")

_STREAM = 0x7A1  # keeps validation noise apart from the training micro-batches' generators


class Validator:
    def __init__(self, tr: Trainer):
        cfg = tr.cfg.validation
        self.tr, self.cfg = tr, cfg
        index = load_index(cfg.latents, tr.storage)
        entries = index.entries[: cfg.max_clips] if cfg.max_clips else index.entries
        if not entries:
            raise ValueError(f"train.validation.latents={cfg.latents}: no clips")
        self.n = len(entries)
        w, r = tr.d.world_size, tr.d.rank
        if self.n < w:
            raise ValueError(
                f"train.validation.latents={cfg.latents}: {self.n} clips for {w} ranks; give at "
                "least one per rank"
            )
        mine = {(index.shards[e.shard], e.key): i for i, e in enumerate(entries) if i % w == r}
        self.samples: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        for shard in dict.fromkeys(s for s, _ in mine):
            for s in iter_samples(shard, tr.storage):
                i = mine.get((shard, s["__key__"]))
                if i is not None:
                    lat = load(s["latent.safetensors"])["latent"]
                    self.samples.append((i, lat, load(s["text.safetensors"])["tokens"]))
        self.samples.sort(key=lambda x: x[0])
        # Under ZeRO-3 every rank must run as many forward passes as the others (each gathers
        # parameters collectively): ranks with fewer clips repeat one and drop its result.
        self.rounds = -(-self.n // w)
        self.t = tr.diffusion.fixed_t(cfg.timesteps)

    @torch.no_grad()
    def _clip(self, i: int, latent: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(timesteps,) float64 loss of clip i at each time of the grid."""
        tr = self.tr
        k = len(self.t)
        x0, batch = pack([latent] * k, [text] * k, tr.cfg.model.patch)
        x0, batch = x0.to(tr.d.device), batch.to(tr.d.device)
        g = torch.Generator()
        g.manual_seed(hash((tr.seed, _STREAM, i)) & (2**63 - 1))  # ints: hash() is stable
        per_token = tr.diffusion.training_loss(tr._denoiser(None), x0, batch, generator=g, t=self.t)
        return per_sample(per_token.double(), batch).cpu()

    def run(self) -> dict[str, Any]:
        """Collective. Returns {"step", "loss", "per_t": [(t, loss), ...]}."""
        tr = self.tr
        was_training = tr.engine.module.training
        tr.engine.module.eval()
        mine: list[tuple[int, list[float]]] = []
        for j in range(self.rounds):
            i, lat, text = self.samples[min(j, len(self.samples) - 1)]
            v = self._clip(i, lat, text)
            if j < len(self.samples):
                mine.append((i, v.tolist()))
        tr.engine.module.train(was_training)
        every: list[list[tuple[int, list[float]]]] = [[] for _ in range(tr.d.world_size)]
        dist.all_gather_object(every, mine)
        rows = sorted((i, v) for part in every for i, v in part)
        per_t = [sum(v[k] for _, v in rows) / len(rows) for k in range(len(self.t))]
        out = {
            "step": tr.step,
            "loss": sum(per_t) / len(per_t),
            "per_t": [[float(t), loss] for t, loss in zip(self.t.tolist(), per_t, strict=True)],
        }
        if tr.d.rank == 0:
            log.info(
                "validation at step %d: loss %.5f over %d held-out clips (%s)",
                tr.step,
                out["loss"],
                len(rows),
                ", ".join(f"t={t:g}: {v:.4f}" for t, v in out["per_t"]),
            )
        return out
