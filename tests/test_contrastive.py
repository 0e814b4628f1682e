"""train.flow.contrastive (contrastive flow matching): pairing of samples and the loss term."""

from __future__ import annotations

import pytest
import torch

from trainer.diffusion.config import FlowConfig
from trainer.diffusion.flow import RectifiedFlow
from trainer.model.packing import pack, partner_tokens


def _batch():  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(0)
    shapes = [(4, 2, 4, 4), (4, 3, 4, 4), (4, 2, 4, 4), (4, 2, 4, 4)]  # sample 1 alone in its grid
    latents = [torch.randn(s, generator=g) for s in shapes]
    return pack(latents, [torch.zeros(2, 8)] * len(shapes), (1, 2, 2))


def test_partner_tokens_pair_samples_of_one_grid_in_a_ring() -> None:
    _, batch = _batch()
    idx, has = partner_tokens(batch)
    cu = batch.cu_seqlens.tolist()  # [0, 8, 20, 28, 36]
    span = [torch.arange(cu[i], cu[i + 1]) for i in range(4)]
    assert torch.equal(idx[span[0]], span[2])  # 0 -> 2 -> 3 -> 0: token by token
    assert torch.equal(idx[span[2]], span[3])
    assert torch.equal(idx[span[3]], span[0])
    assert not has[span[1]].any() and all(has[s].all() for s in (span[0], span[2], span[3]))


def test_contrastive_loss_subtracts_the_partners_target_in_training_only() -> None:
    x0, batch = _batch()

    def zero_model(x, t, b):  # type: ignore[no-untyped-def]
        return torch.zeros_like(x)  # its velocity is 0: each term is its target's square

    def loss(weight: float, t: torch.Tensor | None = None, **kw: list) -> torch.Tensor:  # type: ignore[type-arg]
        flow = RectifiedFlow(FlowConfig(contrastive=weight))
        g = torch.Generator().manual_seed(3)
        return flow.training_loss(zero_model, x0, batch, generator=g, t=t, **kw)

    reported: list[torch.Tensor] = []
    plain, with_term = loss(0.0), loss(0.25, plain=reported)
    idx, has = partner_tokens(batch)
    torch.testing.assert_close(with_term, plain - 0.25 * has.float() * plain[idx])
    torch.testing.assert_close(reported[0], plain)  # what the trainer logs and the guard judges
    assert (with_term[has] < plain[has]).all() and torch.equal(with_term[~has], plain[~has])
    t = torch.full((batch.num_samples,), 0.5)
    torch.testing.assert_close(loss(0.25, t), loss(0.0, t))  # validation measures the plain loss


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("train.flow.contrastive=1.0", "must be in"),
        ("train.parallel.sequence=2", "cannot run with sequence parallelism"),
        ("train.data.token_drop=0.5", "cannot run with sequence parallelism or token dropping"),
    ],
)
def test_contrastive_is_refused_where_it_cannot_pair_tokens(setting: str, message: str) -> None:
    from infra.config import ConfigError, load
    from infra.schema import SpacetimeConfig
    from infra.schema.presets import get_preset

    over = (
        [setting] if setting.startswith("train.flow") else ["train.flow.contrastive=0.05", setting]
    )
    with pytest.raises(ConfigError, match=message):
        load(SpacetimeConfig, get_preset("demo"), None, over).train.validate()
