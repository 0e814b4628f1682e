"""Weighted mixtures of latent sets (`train.data.sources`): one index over all of them, and the
samples each epoch draws from each source.

An epoch-equivalent has as many samples as the sources hold together (E). Source s gets
n_s = E * w_s / sum(w) of them (largest remainders, so they add up to E exactly), taken as the
next n_s positions of an endless stream of that source's entries: pass k of the stream is the
source's entries in the order of Random(seed/source/k). So epoch e takes stream positions
[e * n_s, (e + 1) * n_s): a pure function of (seed, epoch), like the rest of the plan.
"""

from __future__ import annotations

import functools
import random
from dataclasses import replace
from typing import Any

from infra.storage import Storage
from trainer.data.plan import Entry, Index, load_index


def mixture_index(sources: list[Any], storage: Storage) -> Index:
    """The sources' latent sets as one index (shards and entries concatenated in source order),
    with each entry's source and the weights. Latents of different VAEs never mix."""
    shards: list[str] = []
    entries: list[Entry] = []
    source_of: list[int] = []
    vaes: dict[str, str] = {}
    for s, src in enumerate(sources):
        idx = load_index(src.latents, storage)
        if idx.vae:
            vaes.setdefault(idx.vae, src.latents)
        entries += [replace(e, shard=e.shard + len(shards)) for e in idx.entries]
        source_of += [s] * len(idx.entries)
        shards += idx.shards
    if len(vaes) > 1:
        (a, sa), (b, sb) = list(vaes.items())[:2]
        raise ValueError(
            f"train.data.sources: latents of different VAEs never mix: {sa} was made by {a}, "
            f"{sb} by {b}"
        )
    index = Index(shards, entries, next(iter(vaes), ""))
    index.source_of = source_of
    index.weights = [float(s.weight) for s in sources]
    index.names = [s.name or s.latents.rstrip("/").rsplit("/", 1)[-1] for s in sources]
    return index


def shares(weights: list[float], total: int) -> list[int]:
    """`total` split in proportion to `weights`, by largest remainders (sums to `total`)."""
    w = sum(weights)
    exact = [total * x / w for x in weights]
    out = [int(x) for x in exact]
    for i in sorted(range(len(exact)), key=lambda i: (out[i] - exact[i], i))[: total - sum(out)]:
        out[i] += 1
    return out


def epoch_entries(index: Index, epoch: int, seed: int) -> list[int]:
    """Entry indices the mixture draws for `epoch` (a source may repeat within it)."""
    members: list[list[int]] = [[] for _ in index.weights]
    for i, s in enumerate(index.source_of):
        members[s].append(i)
    chosen: list[int] = []
    for s, n in enumerate(shares(index.weights, len(index.entries))):
        size = len(members[s])
        for q in range(epoch * n, (epoch + 1) * n):
            chosen.append(_pass(tuple(members[s]), seed, s, q // size)[q % size])
    return chosen


@functools.lru_cache(maxsize=64)
def _pass(members: tuple[int, ...], seed: int, source: int, k: int) -> list[int]:
    order = list(members)
    random.Random(f"{seed}/mix/{source}/{k}").shuffle(order)
    return order
