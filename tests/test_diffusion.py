"""trainer.diffusion: schedules against closed forms and diffusers, round trips, samplers, overfitting."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.diffusion.common import reduce_loss
from trainer.diffusion.config import DDPMConfig, FlowConfig
from trainer.diffusion.ddpm import GaussianDiffusion, cosine_alpha_bar, make_betas
from trainer.diffusion.flow import RectifiedFlow
from trainer.model.config import DiTConfig
from trainer.model.dit import DiT
from trainer.model.packing import pack

SHAPES = [(4, 2, 4, 4), (4, 1, 4, 6), (4, 3, 2, 4), (4, 2, 6, 2)]


def data(seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    latents = [torch.randn(s, generator=g).to(dtype) for s in SHAPES]
    texts = [torch.randn(3 + i, 16, generator=g).to(dtype) for i in range(len(SHAPES))]
    return pack(latents, texts, (1, 2, 2))


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [("linear", "linear"), ("scaled_linear", "scaled_linear"), ("cosine", "squaredcos_cap_v2")],
)
def test_schedules_match_diffusers(ours: str, theirs: str) -> None:
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DDPMScheduler(
        num_train_timesteps=1000, beta_schedule=theirs, beta_start=1e-4, beta_end=0.02
    )
    d = GaussianDiffusion(DDPMConfig(schedule=ours))  # type: ignore[arg-type]
    torch.testing.assert_close(d.alphas_cumprod.float(), ref.alphas_cumprod, rtol=1e-5, atol=1e-6)


def test_schedules_match_closed_forms() -> None:
    lin = make_betas(DDPMConfig(schedule="linear"))
    assert lin[0] == pytest.approx(1e-4) and lin[-1] == pytest.approx(0.02) and len(lin) == 1000
    d = GaussianDiffusion(DDPMConfig(schedule="cosine"))
    # The product telescopes to alpha_bar((t+1)/T) / alpha_bar(0) wherever no beta was clipped.
    for t in (0, 10, 500, 900):
        assert d.alphas_cumprod[t].item() == pytest.approx(
            cosine_alpha_bar((t + 1) / 1000) / cosine_alpha_bar(0), rel=1e-9
        )
    sq = make_betas(DDPMConfig(schedule="scaled_linear"))
    assert math.sqrt(sq[0]) == pytest.approx(1e-2) and math.sqrt(sq[-1]) == pytest.approx(
        math.sqrt(0.02)
    )
    assert torch.all(d.alphas_cumprod[1:] < d.alphas_cumprod[:-1])


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_round_trip_with_true_target_recovers_x0(prediction: str) -> None:
    d = GaussianDiffusion(DDPMConfig(prediction=prediction))  # type: ignore[arg-type]
    x0, batch = data(dtype=torch.float64)
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 250, 600, 999])
    xt = d.q_sample(x0, t, noise, batch)
    x0_hat, eps_hat = d.predict_x0_eps(xt, d.target(x0, noise, t, batch), t, batch)
    torch.testing.assert_close(x0_hat, x0, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(eps_hat, noise, rtol=1e-9, atol=1e-9)


def tiny_model(seed: int = 0) -> DiT:
    torch.manual_seed(seed)
    return DiT(DiTConfig(size="tiny", in_channels=4, patch=(1, 2, 2), text_dim=16))


def test_ddim_eta0_is_deterministic_and_known_tokens_are_kept() -> None:
    d = GaussianDiffusion(DDPMConfig(prediction="v"))
    m = tiny_model()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.02 * torch.randn_like(p))
    x0, batch = data()
    noise = torch.randn_like(x0)
    a = d.sample(m, noise, batch, steps=10, eta=0.0, generator=torch.Generator().manual_seed(1))
    b = d.sample(m, noise, batch, steps=10, eta=0.0, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    c = d.sample(m, noise, batch, steps=10, eta=1.0, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(a, c)
    # Image-to-video style conditioning: first-frame tokens of every sample stay exactly as given.
    known = batch.coords[:, 0] == 0
    out = d.sample(m, noise, batch, steps=5, eta=0.0, known=(x0, known))
    assert torch.equal(out[known], x0[known]) and not torch.equal(out[~known], x0[~known])
    flow = RectifiedFlow(FlowConfig())
    out = flow.sample(m, noise, batch, steps=5, known=(x0, known))
    assert torch.equal(out[known], x0[known])
    # SDEdit at strength 0 leaves the input as it is; at 1 it is plain sampling.
    torch.testing.assert_close(flow.sample(m, noise, batch, steps=3, start_x0=(x0, 0.0)), x0)


def test_x0_prediction_samples_exactly_and_keeps_the_loss_bounded() -> None:
    """`prediction: x0`: a model whose output F makes c_skip·x_t + c_out·F the true x0 has zero
    velocity loss at every t and the Euler sampler lands on x0 exactly (the path is straight);
    an untrained (zero) x0 model's loss stays O(1) near t = 0, where plain x-prediction's v-loss
    would be |x0|²/t²."""
    x0, batch = data(dtype=torch.float64)
    sigma = 1.3
    flow = RectifiedFlow(FlowConfig(prediction="x0", sigma_data=sigma, shift_base_tokens=64))
    idx = batch.sample_idx.long()

    def oracle(xt: torch.Tensor, t1000: torch.Tensor, _batch) -> torch.Tensor:
        t = (t1000 / 1000)[idx][:, None]
        d = (1 - t) ** 2 * sigma**2 + t**2
        c_skip, c_out = (1 - t) * sigma**2 / d, t * sigma / d.sqrt()
        return (x0 - c_skip * xt) / c_out

    g = torch.Generator().manual_seed(0)
    loss = flow.training_loss(oracle, x0, batch, g)
    assert loss.abs().max() < 1e-18
    noise = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    torch.testing.assert_close(flow.sample(oracle, noise, batch, steps=7), x0, rtol=0, atol=1e-12)

    def zero(xt: torch.Tensor, t1000: torch.Tensor, _batch) -> torch.Tensor:
        return torch.zeros_like(xt)

    near_zero = torch.full((batch.num_samples,), 1e-4, dtype=torch.float64)
    bounded = flow.training_loss(zero, x0, batch, g, t=near_zero).mean().item()
    assert bounded < 3 * (x0.pow(2).mean().item() + 1), bounded
    assert x0.pow(2).mean().item() / 1e-8 > 1e6 * bounded  # what plain x-prediction would cost


@pytest.mark.parametrize("objective", ["epsilon", "v", "flow", "flow-x0"])
def test_tiny_model_overfits(objective: str) -> None:
    x0, batch = data()
    diffusion = (
        RectifiedFlow(
            FlowConfig(
                shift_base_tokens=0, prediction="x0" if objective == "flow-x0" else "velocity"
            )
        )
        if objective.startswith("flow")
        else GaussianDiffusion(DDPMConfig(prediction=objective))
    )  # type: ignore[arg-type]
    m = tiny_model()
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=0.0)

    def eval_loss() -> float:
        g = torch.Generator().manual_seed(123)
        with torch.no_grad():
            return (
                sum(
                    reduce_loss(diffusion.training_loss(m, x0, batch, g), batch, "token").item()
                    for _ in range(8)
                )
                / 8
            )

    before = eval_loss()
    g = torch.Generator().manual_seed(0)
    for _ in range(800):
        loss = reduce_loss(diffusion.training_loss(m, x0, batch, g), batch, "sample")
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    # Measured on the 2-core CPU: epsilon 6.4x, v 3.3x, flow 12x lower after 800 steps.
    assert after < before / 3, (objective, before, after)


def test_foreground_weights_follow_the_object_not_the_background() -> None:
    """A plain background with an object in one corner: background tokens weigh 1, the object's
    1 + alpha; each sample is scaled on its own; validation's fixed times stay unweighted."""
    from trainer.diffusion.config import FlowConfig
    from trainer.diffusion.flow import RectifiedFlow, foreground_weights
    from trainer.model.packing import pack

    a = torch.full((4, 1, 8, 8), 0.5)
    a[:, :, :2, :2] = 3.0  # the object: one 2x2-pixel patch at patch size 1x2x2
    b = torch.full((4, 1, 4, 4), -1.0)
    b[:, :, 2:, 2:] = -0.5  # a fainter object in another sample
    x0, batch = pack([a, b], [torch.zeros(1, 8), torch.zeros(1, 8)], (1, 2, 2))
    w = foreground_weights(x0, batch, 4.0)
    assert w[0] == 5.0 and torch.equal(w[1:16], torch.ones(15))  # sample a: token 0 is the object
    assert w[16 + 3] == 5.0 and torch.equal(w[16:19], torch.ones(3))  # scaled per sample
    flow = RectifiedFlow(FlowConfig(foreground_weight=4.0))

    def zero_model(x, t, b):  # type: ignore[no-untyped-def]
        return torch.zeros_like(x)

    g = torch.Generator().manual_seed(0)
    weighted = flow.training_loss(zero_model, x0, batch, generator=torch.Generator().manual_seed(0))
    fixed_t = flow.sample_t(batch, g)
    plain = RectifiedFlow(FlowConfig()).training_loss(
        zero_model, x0, batch, generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(weighted, plain * w)
    unweighted = flow.training_loss(
        zero_model, x0, batch, generator=torch.Generator().manual_seed(0), t=fixed_t
    )
    torch.testing.assert_close(  # validation's fixed times: no weights applied
        unweighted,
        RectifiedFlow(FlowConfig()).training_loss(
            zero_model, x0, batch, generator=torch.Generator().manual_seed(0), t=fixed_t
        ),
    )
