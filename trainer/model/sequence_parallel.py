"""Sequence parallelism (Ulysses) over NaViT-packed sequences.

A pack (all its samples' tokens, concatenated) is split into P contiguous, equal shards, one per rank
of a sequence-parallel group, after padding it to a multiple of P with tokens that form a segment of
their own (they attend only to each other, get no text and carry no loss). Every token-wise layer
runs on the local shard. Self-attention exchanges heads for tokens: `all_to_all_single` from
(tokens/P, all heads) to (all tokens, heads/P), the varlen kernel over the pack's global
`cu_seqlens`, then back (DeepSpeed-Ulysses, Jacobs et al. 2023). A sample may cross a shard
boundary: the exchange gives each rank every token of its heads, so attention stays per sample.
Cross-attention needs no exchange: each local query segment attends to its own sample's text.

Unlike other video trainers (which pad every sample to a multiple of P, or take fixed shapes),
packing stays exact: only the pack is padded, once.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from kernels.fused import rope_table
from trainer.model.packing import PackedBatch


class _SeqAllToAll(torch.autograd.Function):
    """(tokens/P, H, Dh) -> (tokens, H/P, Dh) on the group, and back; its gradient is the other
    direction of the same exchange."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any, to_heads: bool) -> torch.Tensor:
        ctx.group, ctx.to_heads = group, to_heads
        return _exchange(x, group, to_heads)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return _exchange(grad.contiguous(), ctx.group, not ctx.to_heads), None, None


SENT = {"bytes": 0}
"""Bytes this process has sent to other ranks in the exchanges (forward and backward): the
benchmark's communication volume, counted where it happens."""


def _exchange(x: torch.Tensor, group: Any, to_heads: bool) -> torch.Tensor:
    p = dist.get_world_size(group)
    SENT["bytes"] += x.numel() * x.element_size() * (p - 1) // p  # 1/P of it stays on this rank
    if to_heads:  # (n, H, Dh) -> (P·n, H/P, Dh): chunk j of my heads goes to rank j
        n, h, d = x.shape
        send = x.reshape(n, p, h // p, d).transpose(0, 1).contiguous()  # (P, n, H/P, Dh)
        recv = torch.empty_like(send)
        dist.all_to_all_single(recv, send, group=group)  # recv[i]: rank i's tokens, my heads
        return recv.reshape(p * n, h // p, d)
    # (P·n, H/P, Dh) -> (n, H, Dh): rank j's tokens go back to it, with my heads
    big_n, hp, d = x.shape
    send = x.reshape(p, big_n // p, hp, d).contiguous()
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)  # recv[i]: my tokens, rank i's heads
    return recv.transpose(0, 1).reshape(big_n // p, p * hp, d)


def heads_to_sequence(x: torch.Tensor, group: Any) -> torch.Tensor:
    """(tokens/P, H, Dh) local -> (tokens, H/P, Dh) for attention over the whole pack."""
    return _SeqAllToAll.apply(x, group, True)


def sequence_to_heads(x: torch.Tensor, group: Any) -> torch.Tensor:
    """(tokens, H/P, Dh) -> (tokens/P, H, Dh): the inverse of heads_to_sequence."""
    return _SeqAllToAll.apply(x, group, False)


@dataclass
class AttentionView:
    """What a block's attention layers need about the tokens they see. Without sequence
    parallelism it is the packed batch itself; with it, the local shard plus the pack's global
    self-attention segments."""

    sample_idx: torch.Tensor
    """(n,) sample of each local token (the padding segment's index is the sample count)."""
    coords: torch.Tensor
    """(n, 3) (t, h, w) patch coordinates of each local token."""
    self_cu: torch.Tensor
    """Self-attention segments over the tokens attention sees (the whole, padded pack)."""
    self_max: int
    cross_cu_q: torch.Tensor
    """Cross-attention query segments over the local tokens."""
    cross_max_q: int
    cross_cu_k: torch.Tensor
    """Their text segments, over `text_rows` of the batch's text."""
    cross_max_k: int
    text_rows: torch.Tensor | None
    """Rows of the batch's text the local segments use, in order (None: all of them)."""
    group: Any = None
    """The sequence-parallel process group (None: no exchange)."""
    _rope: dict[tuple[int, float, torch.dtype], torch.Tensor] = field(
        default_factory=dict, repr=False, compare=False
    )

    def rope_table(self, head_dim: int, theta: float, dtype: torch.dtype) -> torch.Tensor:
        """The RoPE rotations of this view's tokens, computed by the first layer that asks and
        shared by every layer of the forward (and its recomputation under checkpointing)."""
        key = (head_dim, theta, dtype)
        if key not in self._rope:
            self._rope[key] = rope_table(self.coords, head_dim, theta, dtype)
        return self._rope[key]

    @classmethod
    def of(cls, batch: PackedBatch) -> AttentionView:
        return cls(
            batch.sample_idx,
            batch.coords,
            batch.cu_seqlens,
            batch.max_seqlen,
            batch.cu_seqlens,
            batch.max_seqlen,
            batch.cu_seqlens_k,
            batch.max_seqlen_k,
            None,
        )


@dataclass
class SequenceShard:
    """One rank's share of a pack under sequence parallelism of degree `size`."""

    group: Any
    size: int
    rank: int
    n: int
    """Real tokens of the pack."""
    padded: int
    """Tokens after padding to a multiple of `size`."""
    view: AttentionView

    @property
    def lo(self) -> int:
        return self.rank * self.padded // self.size

    @property
    def hi(self) -> int:
        return (self.rank + 1) * self.padded // self.size

    def local(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a per-token (N, ...) tensor of the pack (padding rows are zeros)."""
        if self.padded > self.n:
            x = torch.cat([x, x.new_zeros(self.padded - self.n, *x.shape[1:])])
        return x[self.lo : self.hi]

    def scatter(self, local: torch.Tensor) -> torch.Tensor:
        """(n_local, ...) -> (N, ...): the local rows in place, zeros elsewhere (no gradient
        there: each token's loss is taken on the rank that holds it)."""
        out = torch.cat(
            [
                local.new_zeros(self.lo, *local.shape[1:]),
                local,
                local.new_zeros(self.padded - self.hi, *local.shape[1:]),
            ]
        )
        return out[: self.n]

    def mask(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """(N,) bool: the pack's tokens this rank computes (and takes the loss of)."""
        m = torch.zeros(self.n, dtype=torch.bool, device=device)
        m[self.lo : min(self.hi, self.n)] = True
        return m


def shard_pack(batch: PackedBatch, group: Any, size: int, rank: int) -> SequenceShard:
    """Splits a packed batch for rank `rank` of a sequence-parallel group of `size`."""
    cu = batch.cu_seqlens.tolist()
    n, b = cu[-1], batch.num_samples
    padded = -(-n // size) * size
    self_cu = list(cu) + ([padded] if padded > n else [])
    lo, hi = rank * padded // size, (rank + 1) * padded // size
    cu_k = batch.cu_seqlens_k.tolist()
    seg_q, seg_k, rows = [0], [0], []
    for i in range(len(self_cu) - 1):
        a, e = max(self_cu[i], lo), min(self_cu[i + 1], hi)
        if a >= e:
            continue
        seg_q.append(seg_q[-1] + e - a)
        k0, k1 = (cu_k[i], cu_k[i + 1]) if i < b else (0, 0)  # the padding segment has no text
        rows.extend(range(k0, k1))
        seg_k.append(seg_k[-1] + k1 - k0)
    device = batch.cu_seqlens.device
    idx = torch.cat([batch.sample_idx, batch.sample_idx.new_full((padded - n,), b)])[lo:hi]
    coords = torch.cat([batch.coords, batch.coords.new_zeros(padded - n, 3)])[lo:hi]

    def i32(v: list[int]) -> torch.Tensor:
        return torch.tensor(v, dtype=torch.int32, device=device)

    lengths_q = [e - a for a, e in itertools.pairwise(seg_q)]
    lengths_k = [e - a for a, e in itertools.pairwise(seg_k)]
    view = AttentionView(
        idx,
        coords,
        i32(self_cu),
        max(e - a for a, e in itertools.pairwise(self_cu)),
        i32(seg_q),
        max(lengths_q, default=0),
        i32(seg_k),
        max(lengths_k, default=0),
        torch.tensor(rows, dtype=torch.long, device=device),
        group,
    )
    return SequenceShard(group, size, rank, n, padded, view)
