"""Self-conditioning (train.model.self_condition): what the model is given, in training and sampling."""

from __future__ import annotations

import pytest
import torch

from trainer.diffusion.config import FlowConfig
from trainer.diffusion.flow import RectifiedFlow
from trainer.model.config import DiTConfig
from trainer.model.dit import DiT
from trainer.model.packing import pack

SHAPES = [(4, 2, 4, 4), (4, 1, 4, 6), (4, 3, 2, 4)]


def data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    latents = [torch.randn(s, generator=g) for s in SHAPES]
    texts = [torch.randn(3 + i, 16, generator=g) for i in range(len(SHAPES))]
    return pack(latents, texts, (1, 2, 2))


def test_sampler_gives_each_step_the_previous_steps_estimate() -> None:
    x0, batch = data()
    flow = RectifiedFlow(FlowConfig(shift_base_tokens=0))
    given: list[torch.Tensor | None] = []
    steps: list[tuple[torch.Tensor, torch.Tensor]] = []

    def denoiser(x, t, b, x0_prev=None):
        given.append(x0_prev)
        # A denoiser that is right about x0 only once told the truth: the estimate moves.
        guess = x0 if x0_prev is not None else torch.zeros_like(x0)
        tt = (t / 1000)[b.sample_idx.long()][:, None]
        v = (x - guess) / tt
        steps.append((x, tt * v))
        return v

    out = flow.sample(denoiser, torch.randn_like(x0), batch, steps=5, self_condition=True)
    assert given[0] is None and all(g is not None for g in given[1:]) and len(given) == 5
    for i in range(1, 5):  # step i is given x_{i-1} - t_{i-1}·v_{i-1}
        x_prev, tv_prev = steps[i - 1]
        torch.testing.assert_close(given[i], x_prev - tv_prev)
    torch.testing.assert_close(out, x0, rtol=1e-5, atol=1e-5)
    given.clear()
    flow.sample(denoiser, torch.randn_like(x0), batch, steps=3)  # off: never given one
    assert given == [None, None, None]


def test_training_gives_the_estimate_of_a_no_gradient_pass_of_the_same_input() -> None:
    x0, batch = data()
    flow = RectifiedFlow(FlowConfig(shift_base_tokens=0))
    w = torch.nn.Parameter(torch.tensor(0.5))
    calls: list[tuple[bool, torch.Tensor, torch.Tensor | None]] = []

    def denoiser(x, t, b, x0_prev=None):
        calls.append((torch.is_grad_enabled(), x, x0_prev))
        return w * x if x0_prev is None else w * x + x0_prev

    t = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    gen = torch.Generator().manual_seed(3)
    loss = flow.training_loss(denoiser, x0, batch, generator=gen, t=t, self_condition=True)
    (first_grad, xt, first_prev), (second_grad, xt2, prev) = calls
    assert not first_grad and first_prev is None and second_grad
    assert torch.equal(xt, xt2)  # the same noisy input, noise and time
    tt = t.float()[batch.sample_idx.long()][:, None]
    torch.testing.assert_close(prev, xt - tt * 0.5 * xt)  # x_t - t·v of the first pass
    assert not prev.requires_grad and loss.requires_grad and loss.shape == (x0.shape[0],)
    calls.clear()
    flow.training_loss(denoiser, x0, batch, generator=torch.Generator().manual_seed(3), t=t)
    assert len(calls) == 1 and calls[0][2] is None  # off: one pass, no estimate


def test_model_starts_without_it_and_learns_to_use_the_estimate() -> None:
    x0, batch = data()
    torch.manual_seed(0)
    model = DiT(DiTConfig(size="tiny", in_channels=4, text_dim=16, self_condition=True))
    plain = DiT(DiTConfig(size="tiny", in_channels=4, text_dim=16))
    assert model.num_params() - plain.num_params() == model.cfg.patch_dim * 64 + 64
    t = torch.full((batch.num_samples,), 500.0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    estimate = torch.randn_like(x0)
    for _ in range(8):  # a few steps, so the zero-initialised layers (and the embedding) move
        assert model.sc_embed is not None
        before = model(x0, t, batch, None, estimate)
        without = model(x0, t, batch)
        if _ == 0:  # zero-initialised: the estimate changes nothing at first
            torch.testing.assert_close(before, without)
        loss = RectifiedFlow(FlowConfig()).training_loss(
            lambda x, tt, b, x0_prev=None: model(x, tt, b, None, x0_prev),
            x0,
            batch,
            generator=torch.Generator().manual_seed(_),
            self_condition=True,
        )
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
    assert model.sc_embed.weight.abs().sum() > 0
    assert not torch.allclose(model(x0, t, batch, None, estimate), model(x0, t, batch))


def test_self_conditioning_needs_a_flow_model() -> None:
    from trainer.config import TrainConfig

    cfg = TrainConfig()
    cfg.model.self_condition, cfg.objective = True, "ddpm"
    with pytest.raises(ValueError, match="self_condition needs"):
        cfg.validate()
    cfg.objective = "flow"
    cfg.validate()
