"""Each rank's random-number generator states, saved with a checkpoint and restored on resume.

Stored as safetensors plus JSON metadata: loading a checkpoint never unpickles anything of ours
(DeepSpeed's own files still are pickles: load only checkpoints you trust). The trainers draw their
randomness from (seed, step, micro-batch) anyway; these states cover what third-party code draws.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file


def microbatch_generator(seed: int, epoch: int, step: int, microbatch: int) -> torch.Generator:
    """The generator of one micro-batch of the DiT trainer (caption dropout, token drop, noise and
    timesteps): a pure function of its position, so a resume on any world size draws the same."""
    g = torch.Generator()
    g.manual_seed(hash((seed, epoch, step, microbatch)) & (2**63 - 1))
    return g


def rank_state() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """This process's RNG states as (tensors, safetensors metadata): taken at a save's snapshot,
    written by `write_rank_state`, possibly later (asynchronous saves)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, mt, gauss_next = random.getstate()
    tensors = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "python_mt": torch.tensor(mt, dtype=torch.int64),
    }
    if torch.cuda.is_available():
        tensors |= {f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    meta = {
        "numpy": [kind, int(pos), int(has_gauss), float(gauss)],
        "python": [version, gauss_next],
    }
    return tensors, {"state": json.dumps(meta)}


def write_rank_state(
    path: Path, rank: int, state: tuple[dict[str, torch.Tensor], dict[str, str]]
) -> None:
    save_file(state[0], str(path / f"rng-rank{rank:05d}.safetensors"), metadata=state[1])


def save_rank_files(path: Path, rank: int) -> None:
    """This rank's RNG states as safetensors plus JSON metadata: loading a checkpoint never
    unpickles anything of ours (DeepSpeed's own files still are pickles: load only checkpoints
    you trust)."""
    write_rank_state(path, rank, rank_state())


def load_rank_files(path: Path, rank: int) -> bool:
    """Restores this rank's RNG states; False when the checkpoint has none for it (a new rank)."""
    f = path / f"rng-rank{rank:05d}.safetensors"
    if not f.exists():
        return False
    with safe_open(str(f), framework="pt") as st:
        meta = json.loads(st.metadata()["state"])
        t = {k: st.get_tensor(k) for k in st.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    torch.set_rng_state(t["torch"])
    kind, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((kind, t["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, gauss_next = meta["python"]
    random.setstate((version, tuple(t["python_mt"].tolist()), gauss_next))
    cuda = [t[k] for k in sorted(t) if k.startswith("cuda")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    return True
