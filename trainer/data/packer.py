"""NaViT packing of samples into micro-batches: first-fit decreasing into a token budget. The data
plan (trainer.data.plan) calls it per shuffle window; tokens are concatenated by trainer.model.packing.
"""

from __future__ import annotations

import random


def pack_first_fit(
    lengths: list[int], budget: int, seed: int, buffer: int = 1024
) -> list[list[int]]:
    """Groups sample indices into micro-batches of at most `budget` tokens: first-fit decreasing
    over a shuffled buffer (samples longer than the budget travel alone)."""
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    groups: list[list[int]] = []
    for start in range(0, len(order), buffer):
        chunk = sorted(order[start : start + buffer], key=lambda i: -lengths[i])
        bins: list[tuple[int, list[int]]] = []
        for i in chunk:
            for b, (used, members) in enumerate(bins):
                if used + lengths[i] <= budget:
                    bins[b] = (used + lengths[i], [*members, i])
                    break
            else:
                bins.append((lengths[i], [i]))
        groups += [members for _, members in bins]
    return groups
