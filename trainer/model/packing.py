"""NaViT "patch n' pack": clips of any (T, H, W) as one variable-length token sequence.

A latent (C, T, H, W) is cut into patches of (pt, ph, pw) and flattened to tokens; several samples
are concatenated along the token axis with `cu_seqlens` marking their boundaries, so attention runs
per sample (kernels.varlen_attention) with no padding and no cropping. Each token keeps its sample's
index and its (t, h, w) patch coordinates, restarting at 0 for every sample (for 3D RoPE). Text
tokens of all samples are concatenated the same way for cross-attention (`cu_seqlens_k`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PackedBatch:
    """Token-level description of a micro-batch of B samples (N video tokens, M text tokens)."""

    coords: torch.Tensor
    """(N, 3) int32 (t, h, w) patch coordinates per token."""
    sample_idx: torch.Tensor
    """(N,) int32 sample of each token."""
    cu_seqlens: torch.Tensor
    """(B + 1,) int32 token offsets per sample."""
    max_seqlen: int
    text: torch.Tensor
    """(M, text_dim) text token embeddings of all samples, concatenated."""
    cu_seqlens_k: torch.Tensor
    """(B + 1,) int32 text token offsets per sample (a sample may have none: unconditional)."""
    max_seqlen_k: int
    grids: list[tuple[int, int, int]]
    """Patch grid (T', H', W') per sample."""
    shapes: list[tuple[int, int, int, int]]
    """Latent shape (C, T, H, W) per sample."""

    @property
    def num_samples(self) -> int:
        return len(self.grids)

    def to(self, device: torch.device | str) -> PackedBatch:
        return PackedBatch(
            self.coords.to(device),
            self.sample_idx.to(device),
            self.cu_seqlens.to(device),
            self.max_seqlen,
            self.text.to(device),
            self.cu_seqlens_k.to(device),
            self.max_seqlen_k,
            self.grids,
            self.shapes,
        )


def patchify(latent: torch.Tensor, patch: tuple[int, int, int]) -> torch.Tensor:
    """(C, T, H, W) -> (T'·H'·W', C·pt·ph·pw) in (t, h, w) raster order."""
    c, t, h, w = latent.shape
    pt, ph, pw = patch
    if t % pt or h % ph or w % pw:
        raise ValueError(f"latent {tuple(latent.shape)} is not divisible by patch {patch}")
    x = latent.reshape(c, t // pt, pt, h // ph, ph, w // pw, pw)
    x = x.permute(1, 3, 5, 0, 2, 4, 6)  # (T', H', W', C, pt, ph, pw)
    return x.reshape((t // pt) * (h // ph) * (w // pw), c * pt * ph * pw)


def unpatchify(
    tokens: torch.Tensor, grid: tuple[int, int, int], patch: tuple[int, int, int], channels: int
) -> torch.Tensor:
    """Inverse of patchify: (T'·H'·W', C·pt·ph·pw) -> (C, T, H, W)."""
    gt, gh, gw = grid
    pt, ph, pw = patch
    x = tokens.reshape(gt, gh, gw, channels, pt, ph, pw).permute(3, 0, 4, 1, 5, 2, 6)
    return x.reshape(channels, gt * pt, gh * ph, gw * pw)


def grid_coords(grid: tuple[int, int, int]) -> torch.Tensor:
    gt, gh, gw = grid
    t, h, w = torch.meshgrid(torch.arange(gt), torch.arange(gh), torch.arange(gw), indexing="ij")
    return torch.stack((t, h, w), -1).reshape(-1, 3).to(torch.int32)


def _cu(lengths: list[int]) -> torch.Tensor:
    return torch.tensor(
        [0, *torch.tensor(lengths, dtype=torch.int64).cumsum(0).tolist()], dtype=torch.int32
    )


def fit_to_patch(latent: torch.Tensor, patch: tuple[int, int, int]) -> torch.Tensor:
    """A latent (C, T, H, W) cut to multiples of the patch: trailing latent frames, and a centred
    window in space. Clips are cut to multiples of 16 pixels, so only VAEs with a larger stride
    (LTX-Video's 32: 224 px -> 7 latent pixels) lose an edge here; the plan counts the same
    (trainer.data.plan.tokens_of floors)."""
    _, t, h, w = latent.shape
    pt, ph, pw = patch
    if not (t % pt or h % ph or w % pw):
        return latent
    top, left = (h % ph) // 2, (w % pw) // 2
    return latent[:, : t - t % pt, top : top + h - h % ph, left : left + w - w % pw]


def pack(
    latents: list[torch.Tensor], texts: list[torch.Tensor], patch: tuple[int, int, int]
) -> tuple[torch.Tensor, PackedBatch]:
    """Packs latents (C, T, H, W) of any sizes and texts (L_i, text_dim) into (tokens (N, P), batch)."""
    if len(latents) != len(texts) or not latents:
        raise ValueError(
            f"need one text per latent and at least one sample, got {len(latents)} and {len(texts)}"
        )
    tokens, coords, idx, grids, lengths = [], [], [], [], []
    latents = [fit_to_patch(lat, patch) for lat in latents]
    for i, lat in enumerate(latents):
        grid = (lat.shape[1] // patch[0], lat.shape[2] // patch[1], lat.shape[3] // patch[2])
        tok = patchify(lat, patch)
        tokens.append(tok)
        coords.append(grid_coords(grid))
        idx.append(torch.full((tok.shape[0],), i, dtype=torch.int32))
        grids.append(grid)
        lengths.append(tok.shape[0])
    text_lengths = [t.shape[0] for t in texts]
    batch = PackedBatch(
        coords=torch.cat(coords).to(latents[0].device),
        sample_idx=torch.cat(idx).to(latents[0].device),
        cu_seqlens=_cu(lengths).to(latents[0].device),
        max_seqlen=max(lengths),
        text=torch.cat(texts),
        cu_seqlens_k=_cu(text_lengths).to(latents[0].device),
        max_seqlen_k=max(text_lengths),
        grids=grids,
        shapes=[tuple(lat.shape) for lat in latents],  # type: ignore[misc]
    )
    return torch.cat(tokens), batch


def unpack(
    tokens: torch.Tensor, batch: PackedBatch, patch: tuple[int, int, int]
) -> list[torch.Tensor]:
    """(N, P) packed tokens back to one (C, T, H, W) latent per sample."""
    bounds = batch.cu_seqlens.tolist()
    return [
        unpatchify(tokens[bounds[i] : bounds[i + 1]], batch.grids[i], patch, batch.shapes[i][0])
        for i in range(batch.num_samples)
    ]


def kept_tokens(n: int, fraction: float) -> int:
    """How many of a sample's n tokens token dropping keeps (at least one)."""
    return n if fraction <= 0 else max(1, round(n * (1 - fraction)))


def drop_tokens(
    tokens: torch.Tensor, batch: PackedBatch, fraction: float, generator: torch.Generator
) -> tuple[torch.Tensor, PackedBatch, torch.Tensor]:
    """NaViT token dropping: keeps a random (1 - fraction) of each sample's tokens (at least one).

    Returns the kept tokens, their batch (coordinates kept, so RoPE still sees true positions) and
    the (N_kept,) indices into the original tokens, for selecting matching targets.
    """
    keep = []
    bounds = batch.cu_seqlens.tolist()
    for i in range(batch.num_samples):
        n = bounds[i + 1] - bounds[i]
        k = kept_tokens(n, fraction)
        keep.append(bounds[i] + torch.randperm(n, generator=generator)[:k].sort().values)
    kept = torch.cat(keep).to(tokens.device)
    lengths = [len(k) for k in keep]
    new = PackedBatch(
        batch.coords[kept],
        batch.sample_idx[kept],
        _cu(lengths).to(tokens.device),
        max(lengths),
        batch.text,
        batch.cu_seqlens_k,
        batch.max_seqlen_k,
        batch.grids,
        batch.shapes,
    )
    return tokens[kept], new, kept


def partner_tokens(batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Each token's counterpart in another sample of the same patch grid, and whether it has one:
    ((N,) long, (N,) bool). Samples of one grid are paired in a ring (i -> the next of its grid),
    so every sample serves as some other's counterpart; a grid held by one sample gets none."""
    n = batch.coords.shape[0]
    idx, has = torch.arange(n), torch.zeros(n, dtype=torch.bool)
    starts = batch.cu_seqlens.tolist()
    by_grid: dict[tuple[int, int, int], list[int]] = {}
    for i, g in enumerate(batch.grids):
        by_grid.setdefault(g, []).append(i)
    for members in by_grid.values():
        for a, b in zip(members, members[1:] + members[:1], strict=True):
            if a == b or starts[a + 1] - starts[a] != starts[b + 1] - starts[b]:
                continue  # alone in its grid, or tokens dropped unevenly
            idx[starts[a] : starts[a + 1]] = torch.arange(starts[b], starts[b + 1])
            has[starts[a] : starts[a + 1]] = True
    return idx.to(batch.coords.device), has.to(batch.coords.device)
