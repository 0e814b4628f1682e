"""Triton kernels behind kernels.fused (imported only when triton is installed and wanted)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _adaln_kernel(
    x_ptr,
    shift_ptr,
    scale_ptr,
    idx_ptr,
    out_ptr,
    n_cols,
    eps,
    IS_RMS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
    if IS_RMS:
        xn = x * tl.rsqrt(tl.sum(x * x, axis=0) / n_cols + eps)
    else:
        mean = tl.sum(x, axis=0) / n_cols
        d = tl.where(mask, x - mean, 0.0)
        xn = d * tl.rsqrt(tl.sum(d * d, axis=0) / n_cols + eps)
    s = tl.load(idx_ptr + row).to(tl.int64)  # this token's sample: its own shift and scale
    sh = tl.load(shift_ptr + s * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
    sc = tl.load(scale_ptr + s * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
    out = xn * (1.0 + sc) + sh
    tl.store(out_ptr + row * n_cols + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


def adaln_forward(
    x: torch.Tensor,
    shift: torch.Tensor,
    scale: torch.Tensor,
    sample_idx: torch.Tensor,
    rms: bool,
    eps: float,
) -> torch.Tensor:
    x, shift, scale = x.contiguous(), shift.contiguous(), scale.contiguous()
    out = torch.empty_like(x)
    n, c = x.shape
    if n:
        _adaln_kernel[(n,)](
            x,
            shift,
            scale,
            sample_idx.contiguous(),
            out,
            c,
            eps,
            IS_RMS=rms,
            BLOCK=triton.next_power_of_2(c),
        )
    return out


@triton.jit
def _rope_kernel(
    x_ptr,
    coords_ptr,
    axis_ptr,
    inv_ptr,
    out_ptr,
    n_heads,
    head_dim,
    sign,
    BLOCK: tl.constexpr,
):
    token = tl.program_id(0)
    head = tl.program_id(1)
    j = tl.arange(0, BLOCK)
    mask = j < head_dim // 2
    axis = tl.load(axis_ptr + j, mask=mask, other=0)
    inv = tl.load(inv_ptr + j, mask=mask, other=0.0)
    t = tl.load(coords_ptr + token * 3 + 0).to(tl.float32)
    h = tl.load(coords_ptr + token * 3 + 1).to(tl.float32)
    w = tl.load(coords_ptr + token * 3 + 2).to(tl.float32)
    pos = tl.where(axis == 0, t, tl.where(axis == 1, h, w))
    angle = pos * inv * sign
    c = tl.cos(angle)
    s = tl.sin(angle)
    base = x_ptr + (token * n_heads + head) * head_dim
    xe = tl.load(base + 2 * j, mask=mask, other=0.0).to(tl.float32)
    xo = tl.load(base + 2 * j + 1, mask=mask, other=0.0).to(tl.float32)
    obase = out_ptr + (token * n_heads + head) * head_dim
    tl.store(obase + 2 * j, (xe * c - xo * s).to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(obase + 2 * j + 1, (xe * s + xo * c).to(out_ptr.dtype.element_ty), mask=mask)


def rope_forward(
    x: torch.Tensor, coords: torch.Tensor, axis: torch.Tensor, inv: torch.Tensor, sign: float
) -> torch.Tensor:
    x = x.contiguous()
    out = torch.empty_like(x)
    n, heads, dim = x.shape
    if n:
        _rope_kernel[(n, heads)](
            x,
            coords.contiguous(),
            axis,
            inv,
            out,
            heads,
            dim,
            sign,
            BLOCK=triton.next_power_of_2(dim // 2),
        )
    return out
