"""Weights to sample or fine-tune with, from wherever a user points: a run dir, its checkpoints
dir (-> latest), one checkpoint (its EMA, or the ZeRO partitions consolidated here) or an exported
folder. Reading only; trainer/checkpoint.py writes and publishes checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from trainer.checkpoint import LATEST, read_state


def resolve_checkpoint(path: str | Path) -> Path:
    """A run dir, its checkpoints dir (-> latest), a checkpoint dir, or an exported dir."""
    p = Path(path)
    if (p / "checkpoints" / LATEST).exists():
        p = p / "checkpoints"
    if (p / LATEST).exists():
        p = p / (p / LATEST).read_text().strip()
    if not ((p / "trainer_state.json").exists() or (p / "config.json").exists()):
        raise FileNotFoundError(
            f"{path}: not a checkpoint (no trainer_state.json or config.json, no checkpoints/latest)"
        )
    return p


def load_weights(
    path: str | Path, use_ema: bool = True
) -> tuple[dict[str, Any], dict[str, Any], str]:
    """(fp32 state dict, training config as a dict, a description of what was loaded) from a run
    dir, a checkpoint (EMA weights when asked and present, else the ZeRO partitions consolidated
    in this process) or an exported folder."""
    p = resolve_checkpoint(path)
    cfg = (
        read_state(p)["config"]
        if (p / "trainer_state.json").exists()
        else (json.loads((p / "config.json").read_text()))
    )
    if use_ema and (p / "ema.safetensors").exists():
        return load_file(str(p / "ema.safetensors")), cfg, f"{p} (EMA)"
    if (p / "model.safetensors").exists():
        return load_file(str(p / "model.safetensors")), cfg, str(p)
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint  # see export

    return get_fp32_state_dict_from_zero_checkpoint(str(p.parent), tag=p.name), cfg, str(p)
