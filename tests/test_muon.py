"""train.optim.name=muon: which parameters Muon takes, the schedule reaching both halves, resume."""

from __future__ import annotations

import copy

import pytest
import torch

from trainer.model.config import DiTConfig
from trainer.model.dit import DiT
from trainer.muon import Muon, MuonAdamW, muon_params, orthogonalize


def _model() -> DiT:
    torch.manual_seed(0)
    model = DiT(DiTConfig(size="tiny", in_channels=4, text_dim=16))
    for p in model.parameters():  # adaLN-Zero starts the output at 0: give every weight a gradient
        torch.nn.init.normal_(p, std=0.05)
    return model


def _step(model: DiT, opt: torch.optim.Optimizer, seed: int) -> None:
    from trainer.model.packing import pack

    g = torch.Generator().manual_seed(seed)
    x0, batch = pack(
        [torch.randn(4, 2, 4, 4, generator=g)], [torch.randn(3, 16, generator=g)], (1, 2, 2)
    )
    t = torch.full((1,), 0.5)
    loss = (model(x0, t, batch) - x0).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest() -> None:
    model = _model()
    muon, adam = muon_params(model)
    names = {id(p): n for n, p in model.named_parameters()}
    assert muon and all(names[id(p)].startswith("blocks.") and p.ndim == 2 for p in muon)
    assert {names[id(p)] for p in adam} >= {"x_embed.weight", "final.weight", "blocks.0.mlp.0.bias"}
    assert len(muon) + len(adam) == len(list(model.parameters()))


def test_the_schedule_reaches_both_halves_and_a_restored_state_steps_the_same() -> None:
    model = _model()
    opt = MuonAdamW(model, lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.0, momentum=0.95)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 ** (step + 1))
    assert [g["lr"] for g in (*opt.muon.param_groups, *opt.adam.param_groups)] == [5e-3, 5e-3]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _step(model, opt, 0)
    sched.step()
    assert opt.muon.param_groups[0]["lr"] == opt.adam.param_groups[0]["lr"] == 2.5e-3
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert "blocks.0.mlp.0.weight" in moved and "final.weight" in moved

    twin = copy.deepcopy(model)
    twin_opt = MuonAdamW(
        twin, lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.0, momentum=0.95
    )
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    for g in (*opt.param_groups, *twin_opt.param_groups):  # as the schedule sets it: outer groups
        g["lr"] = 1e-3
    assert [g["lr"] for g in (*twin_opt.muon.param_groups, *twin_opt.adam.param_groups)] == [
        1e-3,
        1e-3,
    ]
    _step(model, opt, 1)
    _step(twin, twin_opt, 1)
    for (n, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q), n  # momentum buffers and Adam moments came back


def test_orthogonalize_runs_in_fp32_on_cpu_and_flattens_the_spectrum() -> None:
    g = torch.Generator().manual_seed(0)
    update = torch.randn(96, 32, generator=g) @ torch.diag(torch.logspace(-2, 0, 32))
    out = orthogonalize(update)
    s = torch.linalg.svdvals(out)
    assert out.dtype == torch.float32 and out.shape == update.shape
    assert s.min() > 0.5 and s.max() < 1.5, s  # from singular values spread over 100x
    # torch.optim.Muon's iteration, in bf16: the same up to bf16's rounding, and not bit-equal.
    from torch.optim._muon import _zeropower_via_newtonschulz

    theirs = _zeropower_via_newtonschulz(update, (3.4445, -4.7750, 2.0315), 5, 1e-7).float()
    assert not torch.equal(out, theirs) and (out - theirs).norm() < 0.03 * theirs.norm()


def test_muon_steps_as_torchs_muon_and_loads_its_state() -> None:
    """Checkpoints written with torch.optim.Muon (before round 19) load and step on the same.
    Full-rank gradients: on a rank-deficient one, bf16's rounding puts ~0.05 into directions that
    fp32 keeps at ~0, and the two differ by design."""
    g = torch.Generator().manual_seed(0)
    shapes = [(48, 16), (16, 32)]
    ours_p = [torch.nn.Parameter(torch.randn(*s, generator=g)) for s in shapes]
    theirs_p = [torch.nn.Parameter(p.detach().clone()) for p in ours_p]
    kw = {"lr": 1e-2, "weight_decay": 0.1, "momentum": 0.95}
    ours = Muon(ours_p, **kw)
    theirs = torch.optim.Muon(theirs_p, adjust_lr_fn="match_rms_adamw", **kw)
    start = [p.detach().clone() for p in ours_p]

    def step(params: list[torch.nn.Parameter], opt: torch.optim.Optimizer, seed: int) -> None:
        grads = torch.Generator().manual_seed(seed)
        for p in params:
            p.grad = torch.randn(p.shape, generator=grads)
        opt.step()

    def close(a: list[torch.nn.Parameter], b: list[torch.nn.Parameter]) -> bool:
        return all(
            (p - q).norm() < 0.03 * (q - s).norm() and (p - s).abs().max() > 0
            for p, q, s in zip(a, b, start, strict=True)
        )

    for seed in range(3):
        step(ours_p, ours, seed)
        step(theirs_p, theirs, seed)
    assert close(ours_p, theirs_p)

    resumed_p = [torch.nn.Parameter(p.detach().clone()) for p in theirs_p]
    fresh_p = [torch.nn.Parameter(p.detach().clone()) for p in theirs_p]
    resumed = Muon(resumed_p, **kw)
    resumed.load_state_dict(copy.deepcopy(theirs.state_dict()))
    for params, opt in ((theirs_p, theirs), (resumed_p, resumed), (fresh_p, Muon(fresh_p, **kw))):
        step(params, opt, 3)
    assert close(resumed_p, theirs_p)  # the momentum came back
    assert not close(fresh_p, theirs_p)  # without it, the step differs


def test_muon_is_refused_with_zero_partitioning() -> None:
    from infra.config import ConfigError, load
    from infra.schema import SpacetimeConfig
    from infra.schema.presets import get_preset

    for stage in (1, 2, 3):
        with pytest.raises(ConfigError, match="needs zero_stage 0"):
            load(
                SpacetimeConfig,
                get_preset("default"),
                None,
                ["train.optim.name=muon", f"train.zero_stage={stage}"],
            )
    cfg = load(
        SpacetimeConfig, get_preset("demo"), None, ["train.optim.name=muon", "train.zero_stage=0"]
    )
    assert (cfg.train.optim.name, cfg.train.zero_stage) == ("muon", 0)
