"""kernels.varlen_attention: every available backend against a float64 oracle."""

from __future__ import annotations

import logging

import pytest
import torch

from kernels import Backend, BackendUnavailable, resolve_backend, use_backend, varlen_attention
from kernels.attention import _auto, why_unavailable

CUDA = torch.cuda.is_available()


def packed(
    lens_q: list[int],
    lens_k: list[int],
    heads: int = 4,
    dim: int = 32,
    dtype=torch.float64,
    device="cpu",
    seed=0,
):
    g = torch.Generator().manual_seed(seed)
    cu_q = torch.tensor(
        [0, *torch.tensor(lens_q).cumsum(0).tolist()], dtype=torch.int32, device=device
    )
    cu_k = torch.tensor(
        [0, *torch.tensor(lens_k).cumsum(0).tolist()], dtype=torch.int32, device=device
    )
    q = torch.randn(sum(lens_q), heads, dim, generator=g, dtype=torch.float64).to(device, dtype)
    k = torch.randn(sum(lens_k), heads, dim, generator=g, dtype=torch.float64).to(device, dtype)
    v = torch.randn(sum(lens_k), heads, dim, generator=g, dtype=torch.float64).to(device, dtype)
    return q, k, v, cu_q, cu_k, max(lens_q), max(lens_k)


def dense_oracle(q, k, v, cu_q, cu_k):
    """A different construction: one masked softmax over the whole packed batch, float64."""
    q, k, v = q.double(), k.double(), v.double()
    doc_q = torch.repeat_interleave(torch.arange(len(cu_q) - 1), (cu_q[1:] - cu_q[:-1]).cpu())
    doc_k = torch.repeat_interleave(torch.arange(len(cu_k) - 1), (cu_k[1:] - cu_k[:-1]).cpu())
    allowed = doc_q[:, None] == doc_k[None, :]
    scores = torch.einsum("qhd,khd->hqk", q.cpu(), k.cpu()) * q.shape[-1] ** -0.5
    scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, -1).nan_to_num(0.0)  # rows with no key: zeros
    return torch.einsum("hqk,khd->qhd", probs, v.cpu())


SELF = ([5, 1, 17, 9], [5, 1, 17, 9])
CROSS = ([7, 3, 12, 1], [4, 0, 6, 2])  # one empty caption


@pytest.mark.parametrize("lens", [SELF, CROSS], ids=["self", "cross"])
def test_reference_equals_dense_oracle(lens) -> None:
    q, k, v, cu_q, cu_k, mq, mk = packed(*lens)
    out = varlen_attention(q, k, v, cu_q, cu_k, mq, mk, backend="reference")
    torch.testing.assert_close(out, dense_oracle(q, k, v, cu_q, cu_k), rtol=1e-12, atol=1e-12)
    # No token attends across sequences: changing sequence 2's keys leaves the others alone.
    k2 = k.clone()
    k2[cu_k[2] : cu_k[3]] += 1.0
    out2 = varlen_attention(q, k2, v, cu_q, cu_k, mq, mk, backend="reference")
    rows = torch.ones(q.shape[0], dtype=torch.bool)
    rows[cu_q[2] : cu_q[3]] = False
    assert torch.equal(out[rows], out2[rows]) and not torch.equal(out[~rows], out2[~rows])


def available(device: str, dtype: torch.dtype) -> list[Backend]:
    return [
        b
        for b in Backend
        if b != Backend.AUTO and why_unavailable(b, torch.device(device), dtype) is None
    ]


def cases():
    # The reference is the baseline itself (checked against a dense oracle above); comparing it
    # with itself would hold whatever it computed.
    out = [
        ("cpu", torch.float32, b) for b in available("cpu", torch.float32) if b != Backend.REFERENCE
    ]
    out += [("cpu", torch.float64, Backend.SDPA)]
    if CUDA:
        out += [
            ("cuda", torch.bfloat16, b)
            for b in available("cuda", torch.bfloat16)
            if b != Backend.REFERENCE
        ]
    return out


@pytest.mark.parametrize("lens", [SELF, CROSS], ids=["self", "cross"])
@pytest.mark.parametrize(
    ("device", "dtype", "backend"), cases(), ids=lambda x: str(x).replace("torch.", "")
)
def test_backend_matches_oracle_within_2x_pytorch_error(device, dtype, backend, lens) -> None:
    q64, k64, v64, cu_q, cu_k, mq, mk = packed(*lens)
    grad = torch.randn(q64.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def run(b: Backend, dt: torch.dtype, dev: str):
        q, k, v = (t.detach().to(dev, dt).requires_grad_() for t in (q64, k64, v64))
        out = varlen_attention(q, k, v, cu_q.to(dev), cu_k.to(dev), mq, mk, backend=b)
        grads = torch.autograd.grad(out, (q, k, v), grad.to(dev, dt))
        return out.double().cpu(), [g.double().cpu() for g in grads]

    oracle_out, oracle_grads = run(Backend.REFERENCE, torch.float64, "cpu")
    base_out, base_grads = run(
        Backend.REFERENCE, dtype, "cpu" if dtype != torch.bfloat16 else device
    )
    out, grads = run(backend, dtype, device)
    # Slack of a few dozen ulps so a float64 run (whose "same precision" baseline is the oracle
    # itself, error 0) is not held to exactly zero.
    eps = 64 * torch.finfo(dtype).eps
    # flash-attention's rule: error at most 2x that of a same-precision PyTorch implementation.
    assert (out - oracle_out).abs().max() <= 2 * (base_out - oracle_out).abs().max() + eps
    for g, gb, go in zip(grads, base_grads, oracle_grads, strict=True):
        assert (g - go).abs().max() <= 2 * (gb - go).abs().max() + eps


def test_explicit_unavailable_backend_raises() -> None:
    for b in ("flash2", "flash3", "torch_varlen", "xformers", "flex"):
        if why_unavailable(Backend(b), torch.device("cpu"), torch.float32) is not None:
            with pytest.raises(BackendUnavailable, match=f"'{b}' is unavailable: .*CUDA"):
                resolve_backend(b, torch.device("cpu"), torch.float32)
    with pytest.raises(ValueError):
        resolve_backend("fastest", torch.device("cpu"), torch.float32)


def test_auto_resolution_is_logged_once_and_override_works(
    caplog: pytest.LogCaptureFixture,
) -> None:
    _auto.cache_clear()
    with caplog.at_level(logging.INFO, logger="kernels.attention"):
        assert resolve_backend("auto", torch.device("cpu"), torch.float32) == Backend.SDPA
        assert resolve_backend("auto", torch.device("cpu"), torch.float32) == Backend.SDPA
    assert caplog.text.count("attention backend: auto -> sdpa (cpu, torch.float32)") == 1
    with use_backend("reference"):
        assert resolve_backend("auto", torch.device("cpu"), torch.float32) == Backend.REFERENCE
        assert (
            resolve_backend("sdpa", torch.device("cpu"), torch.float32) == Backend.SDPA
        )  # explicit wins
    assert resolve_backend("auto", torch.device("cpu"), torch.float32) == Backend.SDPA


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_auto_prefers_a_fused_kernel_on_gpu() -> None:
    b = resolve_backend("auto", torch.device("cuda"), torch.bfloat16)
    assert b in (
        Backend.FLASH3,
        Backend.FLASH2,
        Backend.TORCH_VARLEN,
        Backend.XFORMERS,
        Backend.FLEX,
    )


def empty_caption_cases():
    out = [("cpu", torch.float32, b) for b in (Backend.SDPA, Backend.REFERENCE)]
    if CUDA:
        out += [("cuda", torch.bfloat16, b) for b in available("cuda", torch.bfloat16)]
    return out


@pytest.mark.parametrize(
    ("device", "dtype", "backend"),
    empty_caption_cases(),
    ids=lambda x: str(x).replace("torch.", ""),
)
def test_all_captions_empty_still_gives_q_a_gradient(device, dtype, backend) -> None:
    """Under ZeRO, a parameter whose gradient is None on one rank only (every caption of its
    micro-batch dropped) made the ranks' gradient buckets differ: gloo aborted the job."""
    q, k, v, cu_q, cu_k, mq, _ = packed([3, 4], [0, 0], dtype=dtype, device=device)
    q.requires_grad_()
    out = varlen_attention(q, k, v, cu_q, cu_k, mq, 0, backend=backend)
    (g,) = torch.autograd.grad(out.sum(), q)
    assert torch.equal(out, torch.zeros_like(out)) and torch.equal(g, torch.zeros_like(g))


def test_sdpa_keeps_linear_memory_for_backward() -> None:
    """The SDPA backend must reach a fused kernel: on (H, L, D) inputs SDPA ran its math path and
    kept the (H, L, L) probabilities for backward (quadratic memory; 3.5x slower on CPU)."""
    h, n, d = 4, 2048, 32
    q, k, v = (torch.randn(n, h, d, requires_grad=True) for _ in range(3))
    cu = torch.tensor([0, n], dtype=torch.int32)
    saved: list[int] = []

    def keep(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        out = varlen_attention(q, k, v, cu, cu, n, n, backend="sdpa")
    probabilities = h * n * n * 4
    assert sum(saved) < probabilities / 8, (sum(saved), probabilities)
    out.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
