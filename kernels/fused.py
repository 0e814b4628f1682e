"""Fused ops for packed DiT blocks: Triton on GPU, PyTorch elsewhere, one signature.

- `adaln_norm_modulate`: LayerNorm or RMSNorm (no affine), then DiT's adaLN modulation with the
  shift/scale of each token's own sample, gathered by sample index (packed batches mix samples).
- `per_sample_rows`: each token's row of a per-sample table (adaLN's shift, scale and gate).
- `rope_3d`: rotary position embedding over (t, h, w) coordinates per token; the head dim is split
  in three parts, one per axis (as in Wan / Open-Sora's 3D RoPE), each rotated in adjacent pairs.

One dispatcher, shaped like kernels.attention's: `impl="auto"` takes Triton for CUDA tensors when
triton is installed and PyTorch otherwise, resolved once per device type and logged;
`impl="triton"` forces it and raises ImplUnavailable when it cannot run (on CPU it needs
TRITON_INTERPRET=1, which is how CI tests it). The
Triton paths compute the forward pass; their backward recomputes through the PyTorch reference (the
adaLN op) or applies the inverse rotation with the same kernel (RoPE).
"""

from __future__ import annotations

import enum
import functools
import importlib.util
import logging
import os

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


class FusedImpl(enum.StrEnum):
    AUTO = "auto"
    TRITON = "triton"
    TORCH = "torch"


class ImplUnavailable(RuntimeError):
    """An explicitly requested fused-op implementation cannot run here; the message says why."""


def why_unavailable(impl: FusedImpl, device: torch.device) -> str | None:
    """None if `impl` can run on `device`, else the reason it cannot."""
    if impl == FusedImpl.TORCH:
        return None
    if importlib.util.find_spec("triton") is None:
        return "needs the 'triton' package (pip install -e '.[gpu]')"
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return f"needs a CUDA device (got {device.type}; TRITON_INTERPRET=1 runs it on CPU)"
    return None


@functools.cache
def _auto(device_type: str) -> FusedImpl:
    if device_type == "cuda":
        if why_unavailable(FusedImpl.TRITON, torch.device("cuda")) is None:
            log.info("fused ops: auto -> triton (cuda)")
            return FusedImpl.TRITON
        log.warning("fused ops: no triton on cuda; falling back to the PyTorch versions (slower)")
        return FusedImpl.TORCH
    log.info("fused ops: auto -> torch (%s)", device_type)
    return FusedImpl.TORCH


def resolve_impl(name: str | FusedImpl, device: torch.device) -> FusedImpl:
    """The concrete implementation for a request (auto: Triton on CUDA when installed, else
    PyTorch; resolved once per device type and logged); ImplUnavailable for an impossible one."""
    try:
        impl = FusedImpl(name)
    except ValueError:
        raise ValueError(f"impl must be 'auto', 'triton' or 'torch', got {name!r}") from None
    if impl == FusedImpl.AUTO:
        return _auto(device.type)
    reason = why_unavailable(impl, device)
    if reason is not None:
        raise ImplUnavailable(f"fused-op implementation '{impl}' is unavailable: {reason}")
    return impl


# ----------------------------------------------------------------------------- per-sample rows


def per_sample_rows(table: torch.Tensor, sample_idx: torch.Tensor) -> torch.Tensor:
    """table[sample_idx]: (B, C) per-sample rows -> (N, C) per-token rows, differentiable.

    The gradient of the table is a sum over each sample's tokens. Autograd's (index_add) runs it
    as one atomic add per token into a handful of rows; on a GPU, tens of thousands of tokens
    hammer the same B addresses: 11% of a DiT-XL step on an H200 (bench/gpu.py, 2026-12-04). On
    CUDA this sums with a one-hot matmul instead ((B, N) @ (N, C), fp32 accumulation on tensor
    cores); CPUs keep index_add, which has no such contention and was ~4x faster there than
    fancy indexing's accumulating index_put."""
    # int32 indices as they come (index_select takes them): no int64 copy per call.
    if table.device.type == "cuda" and table.requires_grad:
        return _RowsCUDA.apply(table, sample_idx)
    return table.index_select(0, sample_idx)


class _RowsCUDA(torch.autograd.Function):
    @staticmethod
    def forward(ctx, table, idx):  # type: ignore[no-untyped-def, override]
        ctx.save_for_backward(idx)
        ctx.rows = table.shape[0]
        return table.index_select(0, idx)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def, override]
        (idx,) = ctx.saved_tensors
        rows = torch.arange(ctx.rows, device=idx.device)
        onehot = (rows[:, None] == idx[None, :]).to(grad.dtype)  # (B, N)
        return onehot @ grad, None


# ----------------------------------------------------------------------------- adaLN


def adaln_norm_modulate_reference(
    x: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    sample_idx: torch.Tensor,
    norm: str,
    eps: float,
) -> torch.Tensor:
    if norm == "layer":
        xn = F.layer_norm(x, x.shape[-1:], eps=eps)
    elif norm == "rms":
        xn = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    else:
        raise ValueError(f"norm must be 'layer' or 'rms', got {norm!r}")
    return xn * (1 + per_sample_rows(scale, sample_idx)) + per_sample_rows(shift, sample_idx)


def adaln_norm_modulate(
    x: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    sample_idx: torch.Tensor,
    *,
    norm: str = "layer",
    eps: float = 1e-6,
    impl: str = "auto",
) -> torch.Tensor:
    """norm(x) * (1 + scale[sample_idx]) + shift[sample_idx].

    x: (N, C) packed tokens; shift, scale: (B, C) per sample; sample_idx: (N,) int, values in [0, B).
    """
    if x.dim() != 2 or shift.shape != scale.shape or shift.shape[-1] != x.shape[-1]:
        raise ValueError(
            f"expected x (N, C), shift/scale (B, C); got {tuple(x.shape)}, {tuple(shift.shape)}"
        )
    if resolve_impl(impl, x.device) == FusedImpl.TRITON:
        return _AdaLNTriton.apply(x, shift, scale, sample_idx, norm, eps)
    return adaln_norm_modulate_reference(x, shift, scale, sample_idx, norm, eps)


class _AdaLNTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, shift, scale, sample_idx, norm, eps):  # type: ignore[no-untyped-def, override]
        from kernels.triton_ops import adaln_forward  # triton is optional: imported on use

        ctx.save_for_backward(x, shift, scale, sample_idx)
        ctx.norm, ctx.eps = norm, eps
        return adaln_forward(x, shift, scale, sample_idx, norm == "rms", eps)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def, override]
        x, shift, scale, sample_idx = ctx.saved_tensors
        with torch.enable_grad():
            xs = [t.detach().requires_grad_(t.requires_grad) for t in (x, shift, scale)]
            out = adaln_norm_modulate_reference(*xs, sample_idx, ctx.norm, ctx.eps)
            wanted = [t for t in xs if t.requires_grad]
            grads = iter(torch.autograd.grad(out, wanted, grad) if wanted else [])
        return (*(next(grads) if t.requires_grad else None for t in xs), None, None, None)


# ----------------------------------------------------------------------------- 3D RoPE


def rope_split(head_dim: int) -> tuple[int, int, int]:
    """Head-dim parts for (t, h, w): h and w get equal even parts, t the (even) rest."""
    if head_dim % 2:
        raise ValueError(f"head_dim must be even, got {head_dim}")
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


@functools.lru_cache(maxsize=32)
def _rope_tables(
    head_dim: int, theta: float, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per rotated pair j in [0, head_dim/2): its axis (0=t, 1=h, 2=w) and inverse frequency."""
    axes, inv = [], []
    for axis, part in enumerate(rope_split(head_dim)):
        j = torch.arange(part // 2, dtype=torch.float64)
        axes.append(torch.full((part // 2,), axis, dtype=torch.int32))
        inv.append(theta ** (-2.0 * j / part))
    return torch.cat(axes).to(device), torch.cat(inv).to(device)  # float64: cast where used


def _rope_real(dtype: torch.dtype) -> torch.dtype:
    """RoPE's arithmetic dtype: float64 stays float64 (the oracle in tests), the rest float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def rope_3d_reference(
    x: torch.Tensor, coords: torch.Tensor, theta: float, sign: float = 1.0
) -> torch.Tensor:
    axis, inv = _rope_tables(x.shape[-1], theta, x.device)
    dt = _rope_real(x.dtype)
    angle = coords.to(dt)[:, axis.long()] * inv.to(dt) * sign  # (N, D/2)
    cos, sin = angle.cos()[:, None, :], angle.sin()[:, None, :]  # (N, 1, D/2)
    xe, xo = x[..., 0::2].to(dt), x[..., 1::2].to(dt)
    out = torch.stack((xe * cos - xo * sin, xe * sin + xo * cos), dim=-1)
    return out.flatten(-2).to(x.dtype)


def rope_table(
    coords: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """(N, 1, head_dim/2) complex rotations e^(i·angle) of each token's pairs. They depend on
    positions only, so a model computes them once per forward and passes them to every layer's
    q and k (recomputing angles, cos and sin per call was ~2.5 ms of a 1024-token DiT-S layer's
    forward and backward on CPU). float64 gets a complex128 table, the rest complex64."""
    axis, inv = _rope_tables(head_dim, theta, coords.device)
    real = _rope_real(dtype)
    angle = coords.to(real)[:, axis.long()] * inv.to(real)  # (N, D/2)
    return torch.polar(torch.ones_like(angle), angle)[:, None, :]


def rope_3d_torch(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Adjacent pairs as complex numbers times the table: one elementwise op (and one in the
    backward) instead of the reference's strided halves, four multiplies and a stack."""
    xr = x.to(_rope_real(x.dtype))
    if xr.stride(-1) != 1 or xr.storage_offset() % 2 or any(st % 2 for st in xr.stride()[:-1]):
        xr = xr.contiguous()  # view_as_complex needs whole (re, im) pairs in memory
    xc = torch.view_as_complex(xr.unflatten(-1, (-1, 2)))
    return torch.view_as_real(xc * table).flatten(-2).to(x.dtype)


def rope_3d(
    x: torch.Tensor,
    coords: torch.Tensor,
    *,
    theta: float = 10000.0,
    impl: str = "auto",
    table: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rotates adjacent pairs of x by angles from each token's (t, h, w) position.

    x: (N, H, D) packed tokens; coords: (N, 3) integer positions, restarting at 0 in each sample;
    table: `rope_table(coords, D, theta, x.dtype)` if the caller already has it (PyTorch path).
    """
    if x.dim() != 3 or coords.shape != (x.shape[0], 3):
        raise ValueError(
            f"expected x (N, H, D) and coords (N, 3); got {tuple(x.shape)}, {tuple(coords.shape)}"
        )
    if resolve_impl(impl, x.device) == FusedImpl.TRITON:
        return _RopeTriton.apply(x, coords, theta)
    if table is None:
        table = rope_table(coords, x.shape[-1], theta, x.dtype)
    return rope_3d_torch(x, table)


class _RopeTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, coords, theta):  # type: ignore[no-untyped-def, override]
        from kernels.triton_ops import rope_forward  # triton is optional: imported on use

        ctx.save_for_backward(coords)
        ctx.theta = theta
        axis, inv = _rope_tables(x.shape[-1], theta, x.device)
        return rope_forward(x, coords, axis, inv.float(), 1.0)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def, override]
        from kernels.triton_ops import rope_forward

        (coords,) = ctx.saved_tensors
        axis, inv = _rope_tables(grad.shape[-1], ctx.theta, grad.device)
        # A rotation's transpose is the rotation by the opposite angle.
        return rope_forward(grad.contiguous(), coords, axis, inv.float(), -1.0), None, None
