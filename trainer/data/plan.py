"""The training data plan: which samples form which micro-batch, step and rank, decided up front.

Every rank computes the same plan from (index, seed, epoch): shard order shuffled per epoch; shards
taken in windows; the samples of a window shuffled and packed first-fit decreasing into token
budgets; micro-batches grouped into optimizer steps of `microbatches_per_step` (a global number,
independent of world size); each step's micro-batches spread over ranks by cost. A position is just
(epoch, step), so resume needs no iterator state, and a run resumed on another world size sees
exactly the same global batches (only their split over ranks changes). The last < G micro-batches
of an epoch are dropped (counted in `EpochPlan.dropped_samples`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import dataclass, field
from typing import Any

from infra.shards import LATENTS, iter_samples, list_shards
from infra.storage import Storage
from trainer.data.packer import pack_first_fit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Entry:
    shard: int
    """Position of the shard in the sorted shard list."""
    key: str
    shape: tuple[int, int, int, int]
    """Latent (C, T, H, W)."""
    text_len: int


@dataclass
class Index:
    shards: list[str]
    entries: list[Entry]
    vae: str = ""
    """Tag of the VAE that made the latents (trainer.vae.pretrained.vae_identity); "" if unknown
    (latents encoded before it was recorded)."""
    source_of: list[int] | None = None
    """A mixture (trainer/data/mixture.py): the source of each entry; None: one dataset."""
    weights: list[float] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    def fingerprint(self) -> str:

        h = hashlib.sha1()
        for e in self.entries:
            h.update(f"{self.shards[e.shard].rsplit('/', 1)[-1]}/{e.key}/{e.shape};".encode())
        if self.source_of is not None:
            h.update(f"mixture {self.weights} {self.source_of}".encode())
        return h.hexdigest()[:16]


def _safetensors_header(blob: bytes) -> dict[str, Any]:
    header_len = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8 : 8 + header_len])


def _read_safetensors_shape(blob: bytes, name: str) -> list[int]:
    return list(_safetensors_header(blob)[name]["shape"])


def load_index(latents: str, storage: Storage) -> Index:
    """Reads each latent shard's index.json (written by `spacetime encode`); a shard without one is
    scanned (slower, same result)."""
    shards = list_shards(latents, storage, LATENTS)
    entries: list[Entry] = []
    vaes: dict[str, str] = {}  # VAE tag -> the first shard made with it
    for i, shard in enumerate(shards):
        index_uri = shard[: -len(".tar")] + ".index.json"
        if storage.exists(index_uri):
            data = json.loads(storage.read_text(index_uri))
            rows = data["rows"] if isinstance(data, dict) else data  # older: a bare list
            tags = {data.get("vae", {}).get("tag", "")} if isinstance(data, dict) else set()
        else:
            log.warning("%s: no index.json, scanning the shard", shard)
            rows, tags = [], set()
            for s in iter_samples(shard, storage):
                header = _safetensors_header(s["latent.safetensors"])
                tags.add(header.get("__metadata__", {}).get("vae", ""))
                rows.append(
                    {
                        "key": s["__key__"],
                        "shape": header["latent"]["shape"],
                        "text_len": _read_safetensors_shape(s["text.safetensors"], "tokens")[0],
                    }
                )
        for tag in tags - {""}:
            vaes.setdefault(tag, shard)
        if len(vaes) > 1:
            (a, sa), (b, sb) = list(vaes.items())[:2]
            raise ValueError(
                f"{latents}: latents of different VAEs never mix: {sa} was made by {a}, {sb} by "
                f"{b}; encode them all with one VAE (or train on one set)"
            )
        # Key order within a shard, as trainer.data.raw lists clip shards: the same clips planned
        # from cached latents or encoded on the fly form the same batches.
        rows = sorted(rows, key=lambda r: r["key"])
        entries += [Entry(i, r["key"], tuple(r["shape"]), int(r["text_len"])) for r in rows]  # type: ignore[arg-type]
    if not entries:
        raise FileNotFoundError(f"{latents}: latent shards hold no samples")
    return Index(shards, entries, next(iter(vaes), ""))


def tokens_of(shape: tuple[int, int, int, int], patch: tuple[int, int, int]) -> int:
    _, t, h, w = shape
    return (t // patch[0]) * (h // patch[1]) * (w // patch[2])


def sample_cost(tokens: int, hidden: int) -> float:
    """Relative training FLOPs of one sample: linear layers ~28·d² per token, attention ~4·d·L per
    token (so L² matters for long clips), in units of 4·d."""
    return tokens * (7.0 * hidden + tokens)


@dataclass
class EpochPlan:
    epoch: int
    steps: list[list[list[int]]]
    """steps[s][m] = entry indices of micro-batch m of step s (G micro-batches per step)."""
    dropped_samples: int

    def step_tokens(self, s: int, lengths: list[int]) -> int:
        return sum(lengths[i] for mb in self.steps[s] for i in mb)

    def step_samples(self, s: int) -> int:
        return sum(len(mb) for mb in self.steps[s])


def plan_epoch(
    index: Index,
    epoch: int,
    seed: int,
    patch: tuple[int, int, int],
    token_budget: int,
    microbatches_per_step: int,
    shuffle_shards: int,
    chosen: list[int] | None = None,
) -> EpochPlan:
    """`chosen`: the entries this epoch draws (a mixture's, repeats allowed); default all once."""
    rng = random.Random(f"{seed}/{epoch}")
    order = list(range(len(index.shards)))
    rng.shuffle(order)
    by_shard: dict[int, list[int]] = {}
    for i in range(len(index.entries)) if chosen is None else sorted(chosen):
        by_shard.setdefault(index.entries[i].shard, []).append(i)
    lengths = [tokens_of(e.shape, patch) for e in index.entries]
    microbatches: list[list[int]] = []
    for w in range(0, len(order), shuffle_shards):
        members = [i for s in order[w : w + shuffle_shards] for i in by_shard.get(s, [])]
        groups = pack_first_fit(
            [lengths[i] for i in members],
            token_budget,
            seed=rng.randrange(2**31),
            buffer=max(1, len(members)),
        )
        microbatches += [[members[j] for j in g] for g in groups]
    # Micro-batches of a window are ordered by size; shuffle so steps mix short and long ones.
    rng.shuffle(microbatches)
    g = microbatches_per_step
    n_steps = len(microbatches) // g
    dropped = sum(len(mb) for mb in microbatches[n_steps * g :])
    return EpochPlan(epoch, [microbatches[s * g : (s + 1) * g] for s in range(n_steps)], dropped)


def assign_ranks(costs: list[float], world_size: int) -> list[list[int]]:
    """Splits one step's G micro-batches over ranks, G / world_size each, largest cost first to the
    least loaded rank with room (LPT with equal counts: DeepSpeed needs the same accumulation
    count on every rank). Returns micro-batch positions per rank, each in ascending order."""
    g = len(costs)
    if g % world_size:
        raise ValueError(
            f"microbatches_per_step ({g}) must be divisible by the world size ({world_size})"
        )
    per = g // world_size
    load = [0.0] * world_size
    out: list[list[int]] = [[] for _ in range(world_size)]
    for m in sorted(range(g), key=lambda m: (-costs[m], m)):
        r = min((r for r in range(world_size) if len(out[r]) < per), key=lambda r: (load[r], r))
        out[r].append(m)
        load[r] += costs[m]
    return [sorted(o) for o in out]
