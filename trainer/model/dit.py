"""Spacetime DiT: a diffusion transformer over packed spacetime patches of video latents.

Peebles & Xie, "Scalable Diffusion Models with Transformers" (adaLN-Zero blocks), with NaViT packing
(samples of any shape in one sequence), 3D RoPE on (t, h, w) patch coordinates, and cross-attention
from each sample's video tokens to its own text tokens. The model is only a denoiser: it maps noisy
tokens and a per-sample timestep to a prediction; trainer.diffusion owns noising and the loss.
"""

from __future__ import annotations

import math

import torch
import torch.utils.checkpoint
from torch import nn

from kernels import varlen_attention
from kernels.fused import adaln_norm_modulate, per_sample_rows, rope_3d
from trainer.model.config import SIZES, DiTConfig
from trainer.model.packing import PackedBatch, patchify, unpack
from trainer.model.sequence_parallel import (
    AttentionView,
    SequenceShard,
    heads_to_sequence,
    sequence_to_heads,
)

__all__ = ["SIZES", "DiT", "DiTConfig"]


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (B,) timesteps in [0, 1000] (as in DiT / ADM)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(
        t.dtype if t.is_floating_point() else torch.float32
    )


FRAC_FREQS = 6
_AXES = ((1, 0, 0), (0, 1, 0), (0, 0, 1))
_DIAGONALS = ((1, 1, 0), (1, -1, 0), (1, 0, 1), (1, 0, -1), (0, 1, 1), (0, 1, -1))


def frac_directions(diagonals: bool) -> tuple[tuple[int, int, int], ...]:
    """The directions in (t, h, w) along which fractional_features takes sin/cos features."""
    return _AXES + _DIAGONALS if diagonals else _AXES


def fractional_features(batch: PackedBatch, diagonals: bool = False) -> torch.Tensor:
    """(N, 2·FRAC_FREQS·directions) sin/cos features of each token's (t, h, w) patch centre as a
    fraction of its sample's grid in (0, 1): the same for a 32x32 and a 96x64 clip's left edge."""
    coords = batch.coords
    grids = torch.tensor(batch.grids, dtype=torch.float32, device=coords.device)  # (B, 3)
    frac = (coords.float() + 0.5) / grids[batch.sample_idx.long()]  # (N, 3)
    dirs = torch.tensor(frac_directions(diagonals), dtype=torch.float32, device=coords.device)
    freqs = math.pi * 2.0 ** torch.arange(FRAC_FREQS, dtype=torch.float32, device=coords.device)
    args = (frac @ dirs.T)[:, :, None] * freqs  # (N, directions, F)
    return torch.cat([args.sin(), args.cos()], dim=-1).flatten(1)


def frac_feature_dim(cfg: DiTConfig) -> int:
    """Width of fractional_features for this config (0 without fractional positions)."""
    return 2 * FRAC_FREQS * len(frac_directions(cfg.frac_pos_diagonals)) if cfg.frac_pos else 0


def segment_mean(x: torch.Tensor, cu: torch.Tensor, n: int) -> torch.Tensor:
    """(M, D) rows grouped by cu_seqlens -> (n, D) means; an empty group gives zeros."""
    lengths = (cu[1:] - cu[:-1]).long()
    idx = torch.repeat_interleave(torch.arange(n, device=x.device), lengths)
    out = x.new_zeros(n, x.shape[-1]).index_add_(0, idx, x)
    return out / lengths.clamp(min=1)[:, None].to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Attention(nn.Module):
    """Self- (kv from x, RoPE) or cross-attention (kv from text) over packed sequences."""

    def __init__(self, hidden: int, heads: int, cross: bool, cfg: DiTConfig):
        super().__init__()
        self.heads, self.head_dim, self.cross, self.cfg = heads, hidden // heads, cross, cfg
        self.q = nn.Linear(hidden, hidden)
        self.kv = nn.Linear(hidden, 2 * hidden)
        # QK-norm keeps attention logits bounded in long, mixed-resolution training.
        self.q_norm, self.k_norm = RMSNorm(self.head_dim), RMSNorm(self.head_dim)
        self.out = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, view: AttentionView) -> torch.Tensor:
        """x: (n, D) this rank's tokens; ctx: (m, D) keys' source (x itself, or text)."""
        n, m = x.shape[0], ctx.shape[0]
        q = self.q_norm(self.q(x).view(n, self.heads, self.head_dim))  # (n, H, Dh)
        k, v = self.kv(ctx).view(m, 2, self.heads, self.head_dim).unbind(1)  # (m, H, Dh) each
        k = self.k_norm(k)
        backend = self.cfg.attn_backend
        if self.cross:  # each local query segment to its own sample's text: no exchange
            o = varlen_attention(
                q,
                k,
                v,
                view.cross_cu_q,
                view.cross_cu_k,
                view.cross_max_q,
                view.cross_max_k,
                backend=backend,
            )  # (n, H, Dh)
        else:
            theta, impl = self.cfg.rope_theta, self.cfg.fused_impl
            table = view.rope_table(self.head_dim, theta, q.dtype)
            q = rope_3d(q, view.coords, theta=theta, impl=impl, table=table)
            k = rope_3d(k, view.coords, theta=theta, impl=impl, table=table)
            if view.group is not None:  # Ulysses: all tokens, H/P heads on each rank
                q, k, v = (heads_to_sequence(z, view.group) for z in (q, k, v))
            o = varlen_attention(
                q, k, v, view.self_cu, view.self_cu, view.self_max, view.self_max, backend=backend
            )
            if view.group is not None:
                o = sequence_to_heads(o, view.group)  # (n, H, Dh)
        if m == 0:
            # Every caption of the micro-batch dropped: k and v are empty and kv/k_norm would get
            # no gradient (None). Under ZeRO that rank's gradient buckets then differ from the
            # others' and gloo aborts; a zero-valued dependency gives them a zero gradient.
            o = o + 0 * (k.sum() + v.sum())
        return self.out(o.reshape(n, -1))


class DiTBlock(nn.Module):
    """adaLN-Zero block: self-attention, cross-attention to text, MLP; each modulated and gated by
    the sample's conditioning vector (shift, scale, gate per branch)."""

    def __init__(self, hidden: int, heads: int, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        self.self_attn = Attention(hidden, heads, cross=False, cfg=cfg)
        self.cross_attn = Attention(hidden, heads, cross=True, cfg=cfg)
        mlp = int(hidden * cfg.mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(hidden, mlp), nn.GELU(approximate="tanh"), nn.Linear(mlp, hidden)
        )
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 9 * hidden))

    def forward(
        self, x: torch.Tensor, c: torch.Tensor, text: torch.Tensor, view: AttentionView
    ) -> torch.Tensor:
        """x: (n, D) tokens; c: (B, D) conditioning per sample; text: (M, D) the view's text."""
        idx = view.sample_idx
        mods = self.modulation(c).chunk(9, dim=-1)  # 9 x (B, D)
        impl = self.cfg.fused_impl
        for branch, (shift, scale, gate) in enumerate((mods[0:3], mods[3:6], mods[6:9])):
            h = adaln_norm_modulate(x, shift, scale, idx, norm="layer", impl=impl)  # (n, D)
            if branch == 0:
                h = self.self_attn(h, h, view)
            elif branch == 1:
                h = self.cross_attn(h, text, view)
            else:
                h = self.mlp(h)
            x = x + per_sample_rows(gate, idx) * h
        return x


class DiT(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        cfg.validate()
        if cfg.in_channels < 1:
            raise ValueError(
                "DiTConfig.in_channels is 0 (take it from the latents): set it to the VAE's latent "
                "channels before building the model"
            )
        self.cfg = cfg
        depth, hidden, heads = cfg.dims
        self.hidden = hidden
        self.x_embed = nn.Linear(cfg.patch_dim, hidden)
        frac_dim = frac_feature_dim(cfg)
        self.pos_embed = nn.Linear(frac_dim, hidden) if frac_dim else None
        self.sc_embed = nn.Linear(cfg.patch_dim, hidden) if cfg.self_condition else None
        self.t_embed = nn.Sequential(nn.Linear(256, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.text_embed = nn.Sequential(
            nn.Linear(cfg.text_dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, hidden)
        )
        self.pooled_embed = nn.Linear(hidden, hidden)
        self.blocks = nn.ModuleList(DiTBlock(hidden, heads, cfg) for _ in range(depth))
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))
        self.final = nn.Linear(hidden, cfg.patch_dim)
        c = cfg.in_channels
        self.conv_head = nn.Conv3d(c, c, (1, 3, 3), padding=(0, 1, 1)) if cfg.conv_head else None
        self.grad_checkpointing = False
        """Recompute each block in the backward pass instead of storing its activations."""
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's initialisation: Xavier linears, then zero for every adaLN modulation and the output
        layer, so each block starts as the identity (gates are zero) and the model predicts 0."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.t_embed[0].weight, std=0.02)
        nn.init.normal_(self.t_embed[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.modulation[-1].weight)
            nn.init.zeros_(block.modulation[-1].bias)
        nn.init.zeros_(self.final_modulation[-1].weight)
        nn.init.zeros_(self.final_modulation[-1].bias)
        nn.init.zeros_(self.final.weight)
        nn.init.zeros_(self.final.bias)
        if self.sc_embed is not None:  # the model starts as one without self-conditioning
            nn.init.zeros_(self.sc_embed.weight)
        if self.conv_head is not None:  # and as one without the conv head
            nn.init.zeros_(self.conv_head.weight)
            nn.init.zeros_(self.conv_head.bias)

    def forward(
        self,
        tokens: torch.Tensor,
        t: torch.Tensor,
        batch: PackedBatch,
        shard: SequenceShard | None = None,
        x0_prev: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """tokens: (N, patch_dim) noisy packed patches; t: (B,) timesteps in [0, 1000]; x0_prev:
        (N, patch_dim) the previous estimate of the clean tokens (self-conditioning; None: zeros).
        Returns (N, patch_dim) predictions (epsilon, v or velocity: the diffusion object decides).
        With a `shard` (sequence parallelism), this rank computes only its shard of the pack: the
        other rows of the result are zeros, without gradient."""
        view = AttentionView.of(batch) if shard is None else shard.view
        local = tokens if shard is None else shard.local(tokens)
        x = self.x_embed(local)  # (n, D)
        if self.pos_embed is not None:
            feats = fractional_features(batch, self.cfg.frac_pos_diagonals).to(x.dtype)
            x = x + self.pos_embed(feats if shard is None else shard.local(feats))
        if self.sc_embed is not None:
            # Called with zeros when there is no estimate, so every rank's step has a gradient for
            # the same parameters (ZeRO's buckets must match across ranks).
            prev = torch.zeros_like(tokens) if x0_prev is None else x0_prev.to(tokens.dtype)
            x = x + self.sc_embed(prev if shard is None else shard.local(prev))
        text = self.text_embed(batch.text.to(x.dtype))  # (M, D)
        pooled = segment_mean(text, batch.cu_seqlens_k, batch.num_samples)  # (B, D); 0 if no text
        t_emb = timestep_embedding(t, 256).to(x.dtype)
        c = self.t_embed(t_emb) + self.pooled_embed(pooled)  # (B, D)
        if shard is not None:
            c = torch.cat([c, c.new_zeros(1, c.shape[1])])  # the padding segment's row
            if view.text_rows is not None:
                text = text[view.text_rows]
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, c, text, view, use_reentrant=False)
            else:
                x = block(x, c, text, view)
        shift, scale = self.final_modulation(c).chunk(2, dim=-1)
        x = adaln_norm_modulate(
            x, shift, scale, view.sample_idx, norm="layer", impl=self.cfg.fused_impl
        )
        out = self.final(x)  # (n, patch_dim)
        if self.conv_head is not None:
            if shard is not None:
                raise ValueError("train.model.conv_head does not work with sequence parallelism")
            out = out + self._conv_head(out, batch)
        return out if shard is None else shard.scatter(out)

    def _conv_head(self, out: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        """The conv head over each sample's output latent, samples of one grid convolved together."""
        assert self.conv_head is not None
        lats = unpack(out, batch, self.cfg.patch)
        by_grid: dict[tuple[int, int, int], list[int]] = {}
        for i, grid in enumerate(batch.grids):
            by_grid.setdefault(grid, []).append(i)
        res: list[torch.Tensor] = [out[:0]] * batch.num_samples
        for members in by_grid.values():
            y = self.conv_head(torch.stack([lats[i] for i in members]))
            for j, i in enumerate(members):
                res[i] = patchify(y[j], self.cfg.patch)
        return torch.cat(res)

    def flops_per_token(self, seq_len: int, text_len: int) -> float:
        """Training FLOPs per video token of a sample of `seq_len` tokens with `text_len` text
        tokens (forward + backward = 3x forward), for MFU. Matmuls of the tokens themselves count
        per token; the per-sample matmuls (adaLN modulation of the conditioning vector, the text's
        key/value projections) are spread over the sample's tokens: counting the 9·D² modulation
        per token overstated a DiT-S step by ~1.5x before 2026-12-03."""
        depth, d, _ = self.cfg.dims
        mlp = int(d * self.cfg.mlp_ratio)
        seq = max(1, seq_len)
        per_token = 2 * (4 * d * d + 2 * d * d + 2 * d * mlp)  # q kv out | cross q out | MLP
        attention = 4 * d * (seq_len + text_len)  # QK^T and AV, self and cross
        per_sample = 2 * (9 * d * d + 2 * d * d * text_len)  # modulation | text k, v
        patches = 3 if self.cfg.self_condition else 2  # in, out, and the previous estimate's
        embed = 2 * d * (patches * self.cfg.patch_dim + frac_feature_dim(self.cfg))
        if self.cfg.conv_head:  # 3x3 taps of C channels for each of a token's output values
            embed += 2 * 9 * self.cfg.in_channels * self.cfg.patch_dim
        return 3.0 * (depth * (per_token + attention + per_sample / seq) + embed)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
