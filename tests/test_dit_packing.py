"""The packing oracle: a packed forward of samples of different shapes equals running each alone."""

from __future__ import annotations

import pytest
import torch

from trainer.data.packer import pack_first_fit
from trainer.model.config import DiTConfig
from trainer.model.dit import DiT
from trainer.model.packing import drop_tokens, pack, patchify, unpack, unpatchify

SHAPES = [(4, 3, 4, 6), (4, 1, 2, 2), (4, 5, 6, 4), (4, 2, 8, 2)]  # (C, T, H, W): video, image, ...
TEXT_LENS = [5, 0, 7, 3]  # sample 1 is unconditional (empty caption)


def make(seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    latents = [torch.randn(s, generator=g, dtype=dtype) for s in SHAPES]
    texts = [torch.randn(n, 16, generator=g, dtype=dtype) for n in TEXT_LENS]
    t = torch.rand(len(SHAPES), generator=g, dtype=dtype) * 1000
    return latents, texts, t


def model(dtype=torch.float64) -> DiT:
    torch.manual_seed(0)
    m = DiT(DiTConfig(size="tiny", in_channels=4, patch=(1, 2, 2), text_dim=16)).to(dtype)
    # Zero-initialised modulation makes every block the identity; perturb so the test means something.
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def test_patchify_round_trip() -> None:
    latents, _, _ = make()
    for lat in latents:
        assert torch.equal(
            unpatchify(
                patchify(lat, (1, 2, 2)),
                (lat.shape[1], lat.shape[2] // 2, lat.shape[3] // 2),
                (1, 2, 2),
                4,
            ),
            lat,
        )
    tokens, batch = pack(latents, make()[1], (1, 2, 2))
    assert batch.cu_seqlens.dtype == torch.int32 and batch.cu_seqlens_k.tolist() == [
        0,
        5,
        5,
        12,
        15,
    ]
    assert batch.coords[batch.cu_seqlens[1]].tolist() == [0, 0, 0]  # coordinates restart per sample
    assert all(
        torch.equal(a, b) for a, b in zip(unpack(tokens, batch, (1, 2, 2)), latents, strict=True)
    )


def test_packed_forward_and_grads_equal_per_sample() -> None:
    m = model()
    latents, texts, t = make()
    tokens, batch = pack(latents, texts, (1, 2, 2))
    out = m(tokens, t, batch)
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    packed_grads = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    bounds = batch.cu_seqlens.tolist()
    for i in range(len(latents)):
        tok_i, batch_i = pack([latents[i]], [texts[i]], (1, 2, 2))
        out_i = m(tok_i, t[i : i + 1], batch_i)
        torch.testing.assert_close(out_i, out[bounds[i] : bounds[i + 1]], rtol=1e-10, atol=1e-10)
        (out_i * weights[bounds[i] : bounds[i + 1]]).sum().backward()
    for n, p in m.named_parameters():
        torch.testing.assert_close(p.grad, packed_grads[n], rtol=1e-9, atol=1e-10, msg=n)


def test_no_token_attends_across_samples() -> None:
    m = model()
    latents, texts, t = make()
    tokens, batch = pack(latents, texts, (1, 2, 2))
    out = m(tokens, t, batch)
    latents[2] = latents[2] + 1.0
    texts[2] = texts[2] * 3
    t2 = t.clone()
    t2[2] += 100
    tokens2, batch2 = pack(latents, texts, (1, 2, 2))
    out2 = m(tokens2, t2, batch2)
    same = batch.sample_idx != 2
    assert torch.equal(out[same], out2[same]) and not torch.allclose(out[~same], out2[~same])


def test_zero_init_predicts_zero() -> None:
    m = DiT(DiTConfig(in_channels=4, text_dim=16)).double()
    latents, texts, t = make()
    tokens, batch = pack(latents, texts, (1, 2, 2))
    assert torch.equal(m(tokens, t, batch), torch.zeros_like(tokens))


def test_token_dropping_keeps_positions() -> None:
    latents, texts, _ = make()
    tokens, batch = pack(latents, texts, (1, 2, 2))
    kept_tokens, kept_batch, kept = drop_tokens(
        tokens, batch, 0.5, torch.Generator().manual_seed(0)
    )
    assert torch.equal(kept_tokens, tokens[kept]) and torch.equal(
        kept_batch.coords, batch.coords[kept]
    )
    lengths = (kept_batch.cu_seqlens[1:] - kept_batch.cu_seqlens[:-1]).tolist()
    full = (batch.cu_seqlens[1:] - batch.cu_seqlens[:-1]).tolist()
    assert all(1 <= k <= max(1, round(f * 0.5)) for k, f in zip(lengths, full, strict=True))


def test_first_fit_decreasing_respects_budget_and_keeps_everything() -> None:
    import random

    rng = random.Random(0)
    lengths = [rng.randint(1, 900) for _ in range(500)] + [1500]
    groups = pack_first_fit(lengths, budget=1024, seed=1)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in g) <= 1024 or len(g) == 1 for g in groups)
    fill = sum(lengths) / (len(groups) * 1024)
    assert fill > 0.95, fill  # NaViT reports < 2% padding; FFD on a big buffer gets close
    assert groups == pack_first_fit(lengths, budget=1024, seed=1)


def test_every_parameter_gets_a_gradient_when_all_captions_are_dropped() -> None:
    """A None gradient on one rank only breaks ZeRO's gradient buckets (gloo size mismatch)."""
    from trainer.model.config import DiTConfig
    from trainer.model.dit import DiT
    from trainer.model.packing import pack

    model = DiT(DiTConfig(size="tiny", in_channels=4))
    x, batch = pack(
        [torch.randn(4, 2, 4, 4), torch.randn(4, 1, 2, 6)],
        [torch.zeros(0, 384), torch.zeros(0, 384)],
        (1, 2, 2),
    )
    model(x, torch.tensor([500.0, 20.0]), batch).pow(2).mean().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_activation_checkpointing_recomputes_blocks_and_saves_less_for_backward() -> None:
    """The trainer's flag really checkpoints: each block runs twice per step (forward, then again
    in backward) and far fewer bytes are held for backward, with the same gradients."""
    from trainer.config import TrainConfig
    from trainer.train import build_model

    latents, texts, t = make(dtype=torch.float32)
    x, batch = pack(latents, texts, (1, 2, 2))

    def step(checkpointing: bool) -> tuple[int, int, list[torch.Tensor]]:
        cfg = TrainConfig(activation_checkpointing=checkpointing)
        cfg.model = DiTConfig(size="tiny", in_channels=4, patch=(1, 2, 2), text_dim=16)
        torch.manual_seed(0)
        m = build_model(cfg)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.05 * torch.randn_like(p))
        calls = [0]
        for b in m.blocks:
            # A pre-hook: recomputation stops early once it has what backward needs.
            b.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
        saved = [0]

        def pack_hook(tensor: torch.Tensor) -> torch.Tensor:
            saved[0] += tensor.numel() * tensor.element_size()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack_hook, lambda tensor: tensor):
            out = m(x, t, batch)
        out.square().mean().backward()
        return calls[0], saved[0], [p.grad for p in m.parameters()]

    calls, saved, grads = step(False)
    calls_ck, saved_ck, grads_ck = step(True)
    depth = len(DiT(DiTConfig(size="tiny", in_channels=4, patch=(1, 2, 2), text_dim=16)).blocks)
    assert calls == depth and calls_ck == 2 * depth
    assert saved_ck < 0.5 * saved, (saved_ck, saved)
    for a, b in zip(grads, grads_ck, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("attn", ["auto", "sdpa"])
def test_packed_bf16_forward_on_gpu_matches_float64_and_keeps_samples_apart(attn: str) -> None:
    """The GPU path as DeepSpeed's bf16 mode runs it (bf16 weights and inputs, fused varlen
    attention, Triton adaLN and RoPE) computes the same model as the float64 CPU one, and packing
    still isolates the samples."""
    m = model()
    m.cfg.attn_backend = attn
    latents, texts, t = make()
    tokens, batch = pack(latents, texts, (1, 2, 2))
    with torch.no_grad():
        want = m(tokens, t, batch)
        g = m.to(torch.bfloat16).cuda()

        def run(tok: torch.Tensor, b) -> torch.Tensor:  # type: ignore[no-untyped-def]
            bf = torch.bfloat16
            return g(tok.to("cuda", bf), t.to("cuda", bf), b.to("cuda")).double().cpu()

        got = run(tokens, batch)
        # Sample 2 changed: every other sample's rows stay exactly as they were.
        latents[2] = latents[2] + 1.0
        got2 = run(*pack(latents, texts, (1, 2, 2)))
    # bf16 keeps 8 bits of mantissa: a few 1e-2 of the output's scale is its rounding, a wrong
    # mask or position would be of the order of the output itself.
    err = (got - want).abs().max() / want.abs().max()
    assert err < 0.05, float(err)
    same = batch.sample_idx != 2
    assert torch.equal(got[same], got2[same]) and not torch.equal(got[~same], got2[~same])


def test_conv_head_convolves_each_sample_alone_and_starts_as_identity() -> None:
    """train.model.conv_head: the 3x3 convolution over each frame of each sample's own output
    latent (never across packed samples), zero-initialised so the model starts without it."""
    torch.manual_seed(0)
    cfg = DiTConfig(size="tiny", in_channels=4, text_dim=16, conv_head=True)
    model = DiT(cfg)
    shapes = [(4, 2, 4, 4), (4, 1, 4, 6), (4, 2, 4, 4)]
    x, batch = pack([torch.randn(s) for s in shapes], [torch.randn(3, 16)] * 3, cfg.patch)
    t = torch.full((3,), 500.0)
    plain = DiT(DiTConfig(size="tiny", in_channels=4, text_dim=16))
    plain.load_state_dict(
        {k: v for k, v in model.state_dict().items() if not k.startswith("conv_head")}
    )
    torch.nn.init.normal_(model.final.weight)  # a non-zero output for the head to act on
    plain.final.weight.data.copy_(model.final.weight.data)
    torch.testing.assert_close(model(x, t, batch), plain(x, t, batch))  # zero-initialised
    torch.nn.init.normal_(model.conv_head.weight)
    out = torch.randn(x.shape, requires_grad=True)
    res = model._conv_head(out, batch)
    bounds = batch.cu_seqlens.tolist()
    for i, grid in enumerate(batch.grids):  # the same as convolving each sample on its own
        lat = unpatchify(out[bounds[i] : bounds[i + 1]], grid, cfg.patch, 4)
        want = patchify(model.conv_head(lat[None])[0], cfg.patch)
        torch.testing.assert_close(res[bounds[i] : bounds[i + 1]], want)
    res[bounds[0]].sum().backward()  # the first token of sample 0
    grad = out.grad.abs().sum(-1)
    assert grad[bounds[0] + 1] > 0  # its neighbour in the frame
    assert grad[bounds[1] :].sum() == 0  # nothing from the other samples


@pytest.mark.parametrize("setting", ["parallel.sequence", "data.token_drop"])
def test_conv_head_is_refused_where_a_rank_lacks_part_of_a_sample(setting: str) -> None:
    from trainer.config import TrainConfig

    cfg = TrainConfig()
    cfg.model.conv_head = True
    cfg.validate()
    if setting == "parallel.sequence":
        cfg.parallel.sequence = 2
    else:
        cfg.data.token_drop = 0.25
    with pytest.raises(ValueError, match="conv_head works without"):
        cfg.validate()
