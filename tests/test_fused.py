"""kernels.fused: Triton kernels (interpreter on CPU) against their PyTorch references."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from kernels.fused import (
    _RowsCUDA,
    adaln_norm_modulate,
    per_sample_rows,
    rope_3d,
    rope_3d_reference,
    rope_split,
    rope_table,
)

TRITON = importlib.util.find_spec("triton") is not None and (
    torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
)
DEV = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(
    not TRITON, reason="triton is not installed (it installs with the dev extra)"
)


def packed_inputs(dtype=torch.float64, n_samples=3, dim=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    lens = [5, 1, 11][:n_samples]
    idx = torch.repeat_interleave(torch.arange(n_samples), torch.tensor(lens)).to(torch.int32)
    x = torch.randn(sum(lens), dim, generator=g, dtype=torch.float64).to(dtype)
    shift = torch.randn(n_samples, dim, generator=g, dtype=torch.float64).to(dtype)
    scale = torch.randn(n_samples, dim, generator=g, dtype=torch.float64).to(dtype)
    return x, shift, scale, idx


@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_adaln_reference_is_per_sample(norm: str) -> None:
    x, shift, scale, idx = packed_inputs()
    out = adaln_norm_modulate(x, shift, scale, idx, norm=norm, impl="torch")
    for i in range(x.shape[0]):
        row = x[i]
        xn = (
            (row - row.mean()) / torch.sqrt(row.var(unbiased=False) + 1e-6)
            if norm == "layer"
            else row / torch.sqrt(row.pow(2).mean() + 1e-6)
        )
        b = int(idx[i])
        torch.testing.assert_close(out[i], xn * (1 + scale[b]) + shift[b])
    shift2 = shift.clone()
    shift2[1] += 1
    out2 = adaln_norm_modulate(x, shift2, scale, idx, norm=norm, impl="torch")
    changed = (out2 != out).any(-1)
    assert torch.equal(changed, idx == 1)  # only sample 1's tokens moved


@needs_triton
@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_adaln_triton_matches_reference(norm: str) -> None:
    x, shift, scale, idx = packed_inputs(torch.float32)
    grad = torch.randn_like(x)

    def run(impl: str):
        ts = [t.clone().to(DEV).requires_grad_() for t in (x, shift, scale)]
        out = adaln_norm_modulate(*ts, idx.to(DEV), norm=norm, impl=impl)
        return out, torch.autograd.grad(out, ts, grad.to(DEV))

    out_t, grads_t = run("triton")
    out_r, grads_r = run("torch")
    torch.testing.assert_close(out_t, out_r, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads_t, grads_r, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def rope_inputs(dtype=torch.float32, n=13, heads=2, dim=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, heads, dim, generator=g).to(dtype)
    coords = torch.randint(0, 9, (n, 3), generator=g, dtype=torch.int32)
    return x, coords


def test_rope_reference_properties() -> None:
    assert rope_split(64) == (24, 20, 20) and sum(rope_split(128)) == 128
    x, coords = rope_inputs(torch.float64)
    out = rope_3d(x, coords, impl="torch")
    # A rotation keeps each pair's length; position zero is the identity.
    torch.testing.assert_close(
        out.pow(2).reshape(*out.shape[:2], -1, 2).sum(-1),
        x.pow(2).reshape(*x.shape[:2], -1, 2).sum(-1),
    )
    torch.testing.assert_close(rope_3d(x, torch.zeros_like(coords), impl="torch"), x)
    # Relative: <rope(q, p), rope(k, p')> is unchanged when both positions shift by the same amount.
    q, k = x[:1], x[1:2]
    p, p2, d = coords[:1], coords[1:2], torch.tensor([[2, 3, 1]], dtype=torch.int32)
    a = (rope_3d(q, p, impl="torch") * rope_3d(k, p2, impl="torch")).sum()
    b = (rope_3d(q, p + d, impl="torch") * rope_3d(k, p2 + d, impl="torch")).sum()
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rope_complex_table_equals_the_real_reference(dtype: torch.dtype) -> None:
    # The model's path: one table per forward, x a strided slice of a fused kv projection.
    x, coords = rope_inputs(torch.float64, n=37, heads=3, dim=64)
    kv = torch.stack([x, x.flip(0)], 1).to(dtype).requires_grad_()  # (n, 2, H, D)
    k = kv.unbind(1)[0]
    grad = torch.randn(k.shape, dtype=torch.float64).to(dtype)
    table = rope_table(coords, 64, 10000.0, dtype)
    out = rope_3d(k, coords, impl="torch", table=table)
    (g,) = torch.autograd.grad(out, kv, grad)
    kv_ref = kv.detach().clone().requires_grad_()
    ref = rope_3d_reference(kv_ref.unbind(1)[0], coords, 10000.0)
    (g_ref,) = torch.autograd.grad(ref, kv_ref, grad)
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    torch.testing.assert_close(out, ref, rtol=tol, atol=tol)
    torch.testing.assert_close(g, g_ref, rtol=tol, atol=tol)
    assert out.abs().sub(k.abs()).abs().max() > 1e-3  # it did rotate


@needs_triton
def test_rope_triton_matches_reference() -> None:
    x, coords = rope_inputs()
    grad = torch.randn_like(x)

    def run(impl: str):
        xx = x.clone().to(DEV).requires_grad_()
        out = rope_3d(xx, coords.to(DEV), impl=impl)
        return out, torch.autograd.grad(out, xx, grad.to(DEV))[0]

    out_t, g_t = run("triton")
    out_r, g_r = run("torch")
    torch.testing.assert_close(out_t, out_r, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_t, g_r, rtol=1e-5, atol=1e-5)


def test_bad_impl_and_shapes() -> None:
    x, shift, scale, idx = packed_inputs()
    with pytest.raises(ValueError, match="impl must be"):
        adaln_norm_modulate(x, shift, scale, idx, impl="fast")
    with pytest.raises(ValueError, match="expected x"):
        adaln_norm_modulate(x[None], shift, scale, idx)
    with pytest.raises(ValueError, match="expected x"):
        rope_3d(x, idx)


def test_impl_resolution_like_the_attention_dispatcher(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from kernels.fused import FusedImpl, ImplUnavailable, _auto, resolve_impl

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ImplUnavailable, match="'triton' is unavailable: needs a CUDA device"):
        resolve_impl("triton", torch.device("cpu"))
    _auto.cache_clear()
    with caplog.at_level(logging.INFO, logger="kernels.fused"):
        assert resolve_impl("auto", torch.device("cpu")) == FusedImpl.TORCH
        assert resolve_impl("auto", torch.device("cpu")) == FusedImpl.TORCH
    assert caplog.text.count("fused ops: auto -> torch (cpu)") == 1


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_per_sample_rows_sums_each_samples_gradient(device: str) -> None:
    """The one-hot-matmul backward (CUDA's) gives each sample's row the sum of its tokens'
    gradients, as index_select's does; run on CPU too by calling it directly."""
    g = torch.Generator().manual_seed(0)
    idx = torch.tensor([0, 0, 0, 2, 2, 3, 3, 3, 3], dtype=torch.int32)  # sample 1: no tokens
    table = torch.randn(4, 6, generator=g, dtype=torch.float64)
    grad = torch.randn(9, 6, generator=g, dtype=torch.float64)
    want = torch.zeros(4, 6, dtype=torch.float64).index_add_(0, idx.long(), grad)
    for fn in (per_sample_rows, lambda t, i: _RowsCUDA.apply(t, i.long())):
        t = table.to(device).requires_grad_()
        out = fn(t, idx.to(device))
        assert torch.equal(out.cpu(), table[idx.long()])
        (gt,) = torch.autograd.grad(out, t, grad.to(device))
        torch.testing.assert_close(gt.cpu(), want, rtol=1e-12, atol=1e-12)
        assert torch.equal(gt[1].cpu(), torch.zeros(6, dtype=torch.float64))
