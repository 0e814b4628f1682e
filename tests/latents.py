"""Synthetic latent shards in the exact format `spacetime encode` writes (trainer.encode)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import torch
import webdataset as wds

from trainer.encode import latent_record


def write_latent_shards(
    out: Path,
    shapes: list[tuple[int, int, int, int]],
    per_shard: int,
    text_dim: int = 384,
    seed: int = 0,
    index: bool = True,
) -> list[str]:
    """Writes latents-NNNNNN.tar (+ index.json) with one sample per shape; returns the keys.
    Latents carry a learnable signal: a per-sample constant pattern tied to its text."""
    g = torch.Generator().manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    keys = []
    vae = SimpleNamespace(mean=[0.0] * 4, std=[1.0] * 4, scale=1.0)  # normalisation metadata
    for s0 in range(0, len(shapes), per_shard):
        n = s0 // per_shard
        rows = []
        with wds.TarWriter(str(out / f"latents-{n:06d}.tar"), mtime=0) as w:
            for i in range(s0, min(len(shapes), s0 + per_shard)):
                key = f"clip{i:05d}"
                c, t, h, ww = shapes[i]
                text = torch.randn(3 + i % 5, text_dim, generator=g)
                latent = torch.randn(c, t, h, ww, generator=g) * 0.5 + text[0, :c, None, None, None]
                w.write(
                    latent_record(
                        key,
                        latent,
                        text,
                        f"caption {i}",
                        "vae-test",
                        vae,
                        1 + 4 * (t - 1),
                        "test",
                    )
                )
                rows.append({"key": key, "shape": list(latent.shape), "text_len": len(text)})
                keys.append(key)
        if index:
            (out / f"latents-{n:06d}.index.json").write_text(json.dumps(rows))
    return keys
