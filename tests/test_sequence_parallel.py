"""Sequence parallelism (Ulysses over packed sequences) against one process, in float64: the DiT's
outputs and parameter gradients on a sequence-parallel group of 2 equal those of the whole pack,
with a pack whose length is not a multiple of 2, a sample crossing the shard boundary, length-1
samples and an unconditional sample."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from infra.procs import free_port
from trainer.model.config import DiTConfig
from trainer.model.dit import DiT
from trainer.model.packing import pack
from trainer.model.sequence_parallel import shard_pack

pytestmark = pytest.mark.multiprocess

# (C, T, H, W) latents: 12 + 1 + 16 + 1 + 4 = 34 tokens with patch (1, 2, 2)... and one odd total.
SHAPES = [(4, 3, 4, 4), (4, 1, 2, 2), (4, 4, 4, 4), (4, 1, 2, 2), (4, 1, 4, 4), (4, 1, 2, 2)]
TEXT = [5, 0, 7, 3, 1, 2]


def _inputs() -> tuple[DiT, torch.Tensor, torch.Tensor, object]:
    torch.manual_seed(0)
    model = DiT(DiTConfig(size="tiny", in_channels=4, patch=(1, 2, 2), text_dim=16)).double()
    with torch.no_grad():
        for p in model.parameters():  # zero-initialised gates would make every block the identity
            p.add_(0.05 * torch.randn_like(p))
    g = torch.Generator().manual_seed(1)
    latents = [torch.randn(s, generator=g, dtype=torch.float64) for s in SHAPES]
    texts = [torch.randn(n, 16, generator=g, dtype=torch.float64) for n in TEXT]
    x, batch = pack(latents, texts, (1, 2, 2))
    t = torch.rand(len(SHAPES), generator=g, dtype=torch.float64) * 1000
    return model, x, t, batch


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    model, x, t, batch = _inputs()
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=x.dtype)
    shard = shard_pack(batch, dist.group.WORLD, world, rank)
    y = model(x, t, batch, shard)
    (y * grad_out).sum().backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    dist.all_reduce(y)  # each rank holds its rows, zeros elsewhere
    dist.all_reduce(grads)  # the gradient is the sum of the ranks' partial gradients
    if rank == 0:
        torch.save({"y": y.detach(), "grads": grads, "n": x.shape[0]}, out)
    dist.destroy_process_group()


def test_sharded_dit_equals_the_whole_pack_forward_and_backward(tmp_path: Path) -> None:
    out = str(tmp_path / "sp.pt")
    mp.spawn(_worker, args=(2, free_port(), out), nprocs=2, join=True)
    got = torch.load(out)
    model, x, t, batch = _inputs()
    assert got["n"] % 2 == 1  # padded: the length is not a multiple of the SP degree
    shard0 = shard_pack(batch, None, 2, 0)
    cu = batch.cu_seqlens.tolist()
    assert any(a < shard0.hi < b for a, b in itertools.pairwise(cu))  # a sample crosses
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=x.dtype)
    y = model(x, t, batch)
    (y * grad_out).sum().backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    torch.testing.assert_close(got["y"], y.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got["grads"], grads, rtol=1e-10, atol=1e-12)
