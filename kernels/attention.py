"""Variable-length (packed) attention behind one function, with one dispatcher over the backends.

Tensors follow flash-attention's varlen layout: all sequences of a batch concatenated along the
first axis, with int32 cumulative sequence lengths marking where each one starts.

    q: (total_q, heads, head_dim)      cu_seqlens_q: (batch + 1,) int32, cu_seqlens_q[0] == 0
    k, v: (total_k, heads, head_dim)   cu_seqlens_k: (batch + 1,) int32

Query sequence i attends only to key sequence i: self-attention passes the same cu_seqlens twice,
cross-attention (video tokens to their own caption's tokens) passes different ones. A key sequence
may be empty (a dropped caption); its queries then get zeros.

Backends (the only module that imports flash_attn, xformers or FlexAttention):
- flash3: FlashAttention-3 (`flash_attn_interface`, Hopper GPUs), fp16/bf16.
- flash2: FlashAttention-2 (`flash_attn`), CUDA, fp16/bf16.
- torch_varlen: the FlashAttention varlen kernel built into torch (`torch.nn.attention.varlen`,
  torch >= 2.9), CUDA, fp16/bf16: a fused path with no optional package.
- xformers: memory-efficient attention with a BlockDiagonalMask, CUDA.
- flex: torch FlexAttention with a document mask, CUDA (it has no backward on CPU).
- sdpa: torch's scaled_dot_product_attention per sequence; any device and dtype.
- reference: plain matmul/softmax per sequence in the input dtype (float64 works): the oracle.
`auto` picks the first available in that order for the device and dtype, once per (device, dtype),
and logs the choice; a slow fallback on a GPU is a warning. An explicitly requested backend that is
unavailable raises BackendUnavailable with the reason.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import importlib.util
import logging
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


class Backend(enum.StrEnum):
    AUTO = "auto"
    FLASH3 = "flash3"
    FLASH2 = "flash2"
    TORCH_VARLEN = "torch_varlen"
    XFORMERS = "xformers"
    FLEX = "flex"
    SDPA = "sdpa"
    REFERENCE = "reference"


class BackendUnavailable(RuntimeError):
    """An explicitly requested attention backend cannot run here; the message says why."""


Impl = Callable[..., torch.Tensor]
# FLEX after SDPA, so never taken by `auto`: uncompiled, FlexAttention materialises the scores and
# ran at 2-8 TFLOP/s on an H200 where per-sequence SDPA ran at 280-640 (bench/gpu.py, 2026-12-04).
_AUTO_ORDER = (
    Backend.FLASH3,
    Backend.FLASH2,
    Backend.TORCH_VARLEN,
    Backend.XFORMERS,
    Backend.SDPA,
    Backend.FLEX,
)
_override: Backend | None = None


@contextlib.contextmanager
def use_backend(name: str | Backend) -> Iterator[None]:
    """Makes `auto` resolve to `name` inside the block (tests run both fast and slow paths)."""
    global _override
    prev, _override = _override, Backend(name)
    try:
        yield
    finally:
        _override = prev


def why_unavailable(backend: Backend, device: torch.device, dtype: torch.dtype) -> str | None:
    """None if `backend` can run for this device and dtype, else the reason it cannot."""
    half = dtype in (torch.float16, torch.bfloat16)
    if backend in (Backend.SDPA, Backend.REFERENCE):
        return None
    if device.type != "cuda":
        return f"{backend} needs a CUDA device (got {device.type})"
    if backend == Backend.FLEX:
        # find_spec, not hasattr: the submodule is an attribute only once something imported it.
        return (
            None
            if importlib.util.find_spec("torch.nn.attention.flex_attention") is not None
            else "this torch has no FlexAttention"
        )
    if backend == Backend.TORCH_VARLEN:
        if importlib.util.find_spec("torch.nn.attention.varlen") is None:
            return f"torch {torch.__version__} has no torch.nn.attention.varlen (torch >= 2.9)"
        return None if half else f"{backend} supports fp16/bf16 only (got {dtype})"
    module = {
        Backend.FLASH3: "flash_attn_interface",
        Backend.FLASH2: "flash_attn",
        Backend.XFORMERS: "xformers",
    }[backend]
    if importlib.util.find_spec(module) is None:
        return f"{backend} needs the '{module}' package (pip install -e '.[gpu]')"
    if backend in (Backend.FLASH2, Backend.FLASH3) and not half:
        return f"{backend} supports fp16/bf16 only (got {dtype})"
    if backend == Backend.FLASH3 and torch.cuda.get_device_capability(device)[0] < 9:
        return "flash3 needs a Hopper (sm90) or newer GPU"
    return None


@functools.cache
def _auto(device_type: str, device_index: int | None, dtype: torch.dtype) -> Backend:
    device = (
        torch.device(device_type, device_index)
        if device_index is not None
        else torch.device(device_type)
    )
    for b in _AUTO_ORDER:
        if why_unavailable(b, device, dtype) is None:
            if device_type == "cuda" and b == Backend.SDPA:
                log.warning(
                    "attention: no fused varlen kernel on %s; per-sequence sdpa (a launch per sample)",
                    device,
                )
            else:
                log.info("attention backend: auto -> %s (%s, %s)", b, device_type, dtype)
            return b
    raise AssertionError("sdpa is always available")


def resolve_backend(name: str | Backend, device: torch.device, dtype: torch.dtype) -> Backend:
    """The concrete backend for a request; raises BackendUnavailable for an impossible one."""
    b = Backend(name)
    if b == Backend.AUTO:
        if _override is not None:
            b = _override
        else:
            return _auto(device.type, device.index, dtype)
    reason = why_unavailable(b, device, dtype)
    if reason is not None:
        raise BackendUnavailable(f"attention backend '{b}' is unavailable: {reason}")
    return b


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    *,
    backend: str | Backend = "auto",
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """Packed attention: each query sequence attends to its own key sequence. Returns
    (total_q, heads, head_dim) in q's dtype. Autograd works through every backend."""
    if q.dim() != 3 or k.shape[1:] != q.shape[1:] or v.shape != k.shape:
        raise ValueError(
            f"expected q (Tq, H, D) and k, v (Tk, H, D); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if cu_seqlens_q.shape != cu_seqlens_k.shape:
        raise ValueError("cu_seqlens_q and cu_seqlens_k must describe the same number of sequences")
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    b = resolve_backend(backend, q.device, q.dtype)
    if k.shape[0] == 0:
        # Every key sequence empty (all captions dropped): nothing to attend to, for any backend
        # (the fused kernels reject empty keys). q·0 keeps q in the graph: see _per_segment.
        return q * 0
    args = (q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale)
    return _IMPLS[b](*args)


def _segments(cu_q: torch.Tensor, cu_k: torch.Tensor) -> list[tuple[int, int, int, int]]:
    bq, bk = cu_q.tolist(), cu_k.tolist()
    return [(bq[i], bq[i + 1], bk[i], bk[i + 1]) for i in range(len(bq) - 1)]


def _per_segment(
    attend: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor],
) -> Impl:
    """A varlen implementation from a dense (H, L, D) one, run sequence by sequence."""

    def run(q, k, v, cu_q, cu_k, max_q, max_k, scale):  # type: ignore[no-untyped-def]
        out = []
        for q0, q1, k0, k1 in _segments(cu_q, cu_k):
            if q1 == q0:
                continue
            if k1 == k0:  # no keys (an empty caption): nothing to attend to
                # q·0, not new zeros: the output stays in q's graph, so q's weights get a (zero)
                # gradient and not None. Under ZeRO a None gradient on one rank only makes the
                # ranks' gradient buckets differ in size (a gloo size-mismatch abort).
                out.append(q[q0:q1] * 0)
                continue
            # (L, H, D) -> (H, L, D)
            out.append(
                attend(
                    q[q0:q1].transpose(0, 1),
                    k[k0:k1].transpose(0, 1),
                    v[k0:k1].transpose(0, 1),
                    scale,
                ).transpose(0, 1)
            )
        return torch.cat(out) if out else q.new_zeros(0, *q.shape[1:])

    return run


def _reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # (H, Lq, Lk)
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    # A batch axis of 1: SDPA's fused kernels (flash on CPU, flash/memory-efficient on CUDA) take
    # only (B, H, L, D); on (H, L, D) it silently ran the math path, which keeps the (H, L, L)
    # probabilities for backward (786 MB instead of 24 MB at 6 heads x 4096 tokens) and took 3.5x
    # as long on CPU.
    return F.scaled_dot_product_attention(q[None], k[None], v[None], scale=scale)[0]


def _flash2(q, k, v, cu_q, cu_k, max_q, max_k, scale):  # type: ignore[no-untyped-def]
    from flash_attn import (
        flash_attn_varlen_func,
    )  # optional GPU packages, imported by their backend

    # By keyword: FA2 and FA3 differ after the 7th positional argument.
    return flash_attn_varlen_func(
        q=q,
        k=k,
        v=v,
        cu_seqlens_q=cu_q,
        cu_seqlens_k=cu_k,
        max_seqlen_q=max_q,
        max_seqlen_k=max_k,
        softmax_scale=scale,
    )


def _flash3(q, k, v, cu_q, cu_k, max_q, max_k, scale):  # type: ignore[no-untyped-def]
    from flash_attn_interface import flash_attn_varlen_func

    out = flash_attn_varlen_func(
        q=q,
        k=k,
        v=v,
        cu_seqlens_q=cu_q,
        cu_seqlens_k=cu_k,
        max_seqlen_q=max_q,
        max_seqlen_k=max_k,
        softmax_scale=scale,
    )
    # Some FA3 releases return (out, softmax_lse), others out alone.
    return out[0] if isinstance(out, tuple) else out


def _torch_varlen(q, k, v, cu_q, cu_k, max_q, max_k, scale):  # type: ignore[no-untyped-def]
    from torch.nn.attention.varlen import varlen_attn

    out = varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, scale=scale)
    return _zero_keyless(out, cu_q, cu_k)


def _zero_keyless(out: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor) -> torch.Tensor:
    """Rows of a query sequence with no key at all come out of fused kernels as NaN or garbage;
    an empty caption means zeros. Self-attention (the same cu_seqlens twice) has no such rows:
    its output is returned without another pass over it."""
    if cu_k is cu_q:
        return out
    has_keys = (cu_k[1:] - cu_k[:-1] > 0).repeat_interleave(
        cu_q[1:] - cu_q[:-1], output_size=out.shape[0]
    )
    return torch.where(has_keys[:, None, None], out, torch.zeros_like(out))


def _xformers(q, k, v, cu_q, cu_k, max_q, max_k, scale):  # type: ignore[no-untyped-def]
    from xformers.ops import fmha

    lq = (cu_q[1:] - cu_q[:-1]).tolist()
    lk = (cu_k[1:] - cu_k[:-1]).tolist()
    bias = fmha.attn_bias.BlockDiagonalMask.from_seqlens(q_seqlen=lq, kv_seqlen=lk)
    return fmha.memory_efficient_attention(q[None], k[None], v[None], attn_bias=bias, scale=scale)[
        0
    ]


def _flex(q, k, v, cu_q, cu_k, max_q, max_k, scale):  # type: ignore[no-untyped-def]
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    doc_q = torch.repeat_interleave(
        torch.arange(len(cu_q) - 1, device=q.device), cu_q[1:] - cu_q[:-1]
    )
    doc_k = torch.repeat_interleave(
        torch.arange(len(cu_k) - 1, device=q.device), cu_k[1:] - cu_k[:-1]
    )

    def same_doc(b, h, qi, ki):  # type: ignore[no-untyped-def]
        return doc_q[qi] == doc_k[ki]

    mask = create_block_mask(same_doc, None, None, q.shape[0], k.shape[0], device=q.device)
    out = flex_attention(
        q.transpose(0, 1)[None],
        k.transpose(0, 1)[None],
        v.transpose(0, 1)[None],
        block_mask=mask,
        scale=scale,
    )
    return _zero_keyless(out[0].transpose(0, 1), cu_q, cu_k)


_IMPLS: dict[Backend, Impl] = {
    Backend.REFERENCE: _per_segment(_reference),
    Backend.SDPA: _per_segment(_sdpa),
    Backend.FLASH2: _flash2,
    Backend.FLASH3: _flash3,
    Backend.TORCH_VARLEN: _torch_varlen,
    Backend.XFORMERS: _xformers,
    Backend.FLEX: _flex,
}
