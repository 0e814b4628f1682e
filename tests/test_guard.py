"""The step guard's decisions (trainer/guard.py), without an engine; the runs under DeepSpeed are
in tests/test_long_runs.py."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.config import GuardConfig
from trainer.guard import StepGuard, grad_norm_of, guard_optimizer


def _warm(g: StepGuard, n: int = 5) -> None:
    for i in range(n):
        g.begin(1.0 + 0.01 * i)
        assert g.record(i + 1, (0, i), 1.0 + 0.01 * i, 2.0, None) is False


def test_non_finite_values_are_always_skipped_spikes_after_the_history_fills() -> None:
    g = StepGuard(GuardConfig(spike_factor=5, min_history=5))
    assert g.judge(float("nan"), 1.0) == "loss is nan"
    assert g.judge(1.0, float("inf")) == "gradient norm is inf"
    assert g.judge(100.0, 1000.0) is None  # no history yet: spikes are not judged
    _warm(g)
    assert g.judge(1.04, 2.0) is None
    assert g.judge(1.0, 10.5).startswith("gradient norm 10.5 > 5 x its running median 2")
    assert g.judge(6.0, 2.0).startswith("loss 6 > 5 x its running median 1.02")
    assert StepGuard(GuardConfig(enabled=False)).judge(float("nan"), float("nan")) is None
    assert StepGuard(GuardConfig(spike_factor=0, min_history=1)).judge(1e9, 1e9) is None


def test_spikes_are_not_judged_during_the_learning_rate_warm_up() -> None:
    """From a zero-initialised DiT the gradient norm grows tenfold while the warm-up raises the
    learning rate (norms 4.5-5.0 against a median of 0.41 at steps 47-49 of a demo run, whose
    guard then ended it); non-finite values are still skipped there."""
    g = StepGuard(GuardConfig(spike_factor=5, min_history=5), arm_after=8)
    _warm(g)  # steps 1-5
    g.begin(1.0, 6)
    assert g.judge(1.0, 50.0) is None and g.judge(float("nan"), 1.0) == "loss is nan"
    g.begin(1.0, 8)
    assert g.judge(1.0, 50.0) is None
    g.begin(1.0, 9)  # the first step after the warm-up
    assert g.judge(1.0, 50.0).startswith("gradient norm 50 > 5 x its running median 2")
    g.begin(1.0)  # no step given (an engine driven by hand): judged as before
    assert g.judge(1.0, 50.0) is not None


def test_the_reference_for_a_spike_starts_after_the_warm_up() -> None:
    """Norms kept during the warm-up would make the median of the early, small norms the
    reference: a 1x4x4 demo run's norms of ~9 right after its warm-up (median 0.7 until then)
    were judged spikes and rolled it back until it ended. The warm-up's values are not kept, so
    judging waits for `min_history` steps after it, against their median."""
    g = StepGuard(GuardConfig(spike_factor=5, min_history=5), arm_after=8)
    for step in range(1, 9):  # the warm-up: small norms
        g.begin(1.0, step)
        assert g.judge(1.0, 0.5) is None
        assert g.record(step, (0, step), 1.0, 0.5, None) is False
    assert len(g.norms) == 0
    for step in range(9, 14):  # after it, the norm is 10x the warm-up's: not a spike, kept
        g.begin(1.0, step)
        assert g.judge(1.0, 5.0) is None
        g.record(step, (0, step), 1.0, 5.0, None)
    g.begin(1.0, 14)
    assert g.judge(1.0, 20.0) is None
    assert g.judge(1.0, 50.0).startswith("gradient norm 50 > 5 x its running median 5")


def test_clustered_skips_ask_for_a_rollback_and_the_window_is_kept() -> None:
    g = StepGuard(GuardConfig(max_skips=2, skip_window=3, min_history=1))
    _warm(g, 2)
    assert g.record(3, (0, 2), 1.0, math.inf, "gradient norm is inf") is False
    assert g.record(7, (1, 0), 1.0, math.inf, "x") is False  # step 3 fell out of the window
    assert g.record(8, (1, 1), 1.0, math.inf, "x") is True
    window = g.offending_window()
    assert window == ((1, 0), (1, 1))
    g.rolled_back(window)
    assert g.excluded((1, 0)) and g.excluded((1, 1)) and not g.excluded((1, 2))
    assert not g.excluded((0, 9))
    state = g.state_dict()
    h = StepGuard(GuardConfig())
    h.load_state_dict(state)
    assert h.windows == [window] and h.rollbacks == 1 and list(h.norms) == [2.0, 2.0]
    # A rollback to an older checkpoint (which lacks the window) keeps it and clears the skips.
    h.skipped = [{"step": 9, "position": [1, 3], "reason": "x"}]
    h.load_state_dict({"losses": [1.0], "norms": [1.0], "skipped": [{"step": 1}]}, rollback=True)
    assert h.windows == [window] and h.rollbacks == 1 and h.skipped == []


def test_too_many_rollbacks_end_the_run() -> None:
    g = StepGuard(GuardConfig(max_rollbacks=1))
    g.rolled_back(((0, 1), (0, 2)))
    with pytest.raises(RuntimeError, match="2 rollbacks"):
        g.rolled_back(((0, 5), (0, 6)))


def test_the_veto_stops_the_inner_optimizer_step() -> None:
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=0.5)
    g = StepGuard(GuardConfig(min_history=1))
    guard_optimizer(opt, g, lambda: None)  # no engine norm: computed from the gradients
    p.grad = torch.tensor([3.0, 4.0, 0.0])
    assert grad_norm_of(opt) == 5.0
    g.begin(1.0)
    opt.step()
    assert torch.equal(p.detach(), torch.tensor([-0.5, -1.0, 1.0])) and g.veto == ""
    g.record(1, (0, 0), 1.0, 5.0, None)
    p.grad = torch.tensor([float("nan"), 0.0, 0.0])
    g.begin(1.0)
    opt.step()
    assert g.veto == "gradient norm is nan"
    assert torch.equal(p.detach(), torch.tensor([-0.5, -1.0, 1.0]))  # unchanged
    # The scheduler wraps the guarded step in turn (it needs a bound method).
    torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)


def test_guard_settings_are_checked() -> None:
    for bad in (
        GuardConfig(spike_factor=0.5),
        GuardConfig(max_skips=0),
        GuardConfig(max_rollbacks=-1),
    ):
        with pytest.raises(ValueError):
            bad.validate()
    GuardConfig().validate()
