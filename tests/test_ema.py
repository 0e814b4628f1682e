"""EMA warm-up: the average forgets the random initialisation within a tenth of the run."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from trainer.ema import EMA


def _run(warmup: bool, steps: int) -> float:
    model = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(model.weight)
    ema = EMA(model, 0.99, warmup)
    with torch.no_grad():
        model.weight.fill_(1.0)  # the trained weights jump to 1 and stay there
    for step in range(1, steps + 1):
        ema.update(step)
    return float(ema.shadow["weight"])


def test_warmup_schedule_and_effect() -> None:
    ema = EMA(nn.Linear(1, 1), 0.99, warmup=True)
    decays = [ema.decay_at(s) for s in range(1, 2000)]
    assert abs(decays[0] - 2 / 11) < 1e-12 and decays[-1] == 0.99
    assert all(a <= b for a, b in itertools.pairwise(decays))
    assert EMA(nn.Linear(1, 1), 0.99, warmup=False).decay_at(1) == 0.99
    # After 50 steps at the new weights, a plain 0.99 EMA still holds 0.99^50 = 61% of the
    # initialisation; with warm-up it holds the product of the decays (1 + s) / (10 + s): ~0.
    plain, warm = _run(False, 50), _run(True, 50)
    assert abs(plain - (1 - 0.99**50)) < 1e-6, plain
    assert warm > 0.8, warm
