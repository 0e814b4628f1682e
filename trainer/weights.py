"""Weights to sample or fine-tune with, from wherever a user points: a run dir, its checkpoints
dir (-> latest), one checkpoint (its EMA, or the ZeRO partitions consolidated here) or an exported
folder. Reading (and `export --merge-lora`); trainer/checkpoint.py writes and publishes checkpoints.

A LoRA run's checkpoints and unmerged exports hold only adapters: its base is read from the run's
`train.init` (checked against the digest the run recorded) and the adapters applied on top
(trainer/lora.py)."""

from __future__ import annotations

import dataclasses
import json
import logging
import typing
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from infra.config import from_dict
from infra.errors import JobError
from trainer import lora
from trainer.checkpoint import LATEST, fp32_weights, read_state
from trainer.config import TrainConfig
from trainer.model.dit import DiT

log = logging.getLogger(__name__)

LORA_BASE = "lora_base.json"  # an unmerged LoRA export's record of its base (init and digest)


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


def is_lora(cfg: dict[str, Any]) -> bool:
    return bool((cfg.get("lora") or {}).get("rank"))


def read_config(p: Path) -> dict[str, Any]:
    """The training config (as a dict) of checkpoint or export `p`."""
    if (p / "trainer_state.json").exists():
        return read_state(p)["config"]
    return json.loads((p / "config.json").read_text())


def read_weights(p: Path, use_ema: bool) -> tuple[dict[str, Any], dict[str, Any], str]:
    """The state dict as stored in checkpoint or export `p` (a LoRA run's: adapters only)."""
    cfg = read_config(p)
    if use_ema and (p / "ema.safetensors").exists():
        return load_file(str(p / "ema.safetensors")), cfg, f"{p} (EMA)"
    if (p / "model.safetensors").exists():
        return load_file(str(p / "model.safetensors")), cfg, str(p)
    return fp32_weights(p.parent, p.name), cfg, str(p)


def lora_base(p: Path) -> dict[str, Any] | None:
    """What LoRA checkpoint or export `p` recorded of its base: {"digest", "init"}."""
    if (p / "trainer_state.json").exists():
        return read_state(p).get("lora_base")
    f = p / LORA_BASE
    return json.loads(f.read_text()) if f.exists() else None


def _known_keys(cls: type, data: dict[str, Any], where: str, path: str = "") -> dict[str, Any]:
    """Drops keys a newer version of the config no longer has (a checkpoint outlives its code),
    with a warning naming them; everything else is still checked strictly."""
    hints = typing.get_type_hints(cls)
    out = {}
    for k, v in data.items():
        if k not in hints:
            log.warning("%s: ignoring config key %s%s (not in this version)", where, path, k)
            continue
        tp = hints[k]
        out[k] = (
            _known_keys(tp, v, where, f"{path}{k}.")
            if dataclasses.is_dataclass(tp) and isinstance(v, dict)
            else v
        )
    return out


def _adapted(
    p: Path, adapters: dict[str, torch.Tensor], cfg: TrainConfig, which: str
) -> torch.nn.Module:
    """The base model of LoRA checkpoint `p` with `adapters` applied (unmerged)."""
    recorded = lora_base(p) or {}
    init = recorded.get("init") or cfg.init
    try:
        base_sd, _, base_which = load_weights(init, use_ema=cfg.init_weights == "ema")
    except FileNotFoundError as e:
        raise JobError(f"{which}: a LoRA checkpoint; its base weights ({init}): {e}") from None
    model = DiT(cfg.model)
    model.load_state_dict(base_sd, strict=True)
    if recorded.get("digest") and lora.digest(model.state_dict()) != recorded["digest"]:
        raise JobError(
            f"{which}: a LoRA checkpoint whose base has changed: {base_which} is not the weights "
            "it was trained on (digest differs)"
        )
    lora.apply(model, cfg.lora)
    missing, unexpected = model.load_state_dict(adapters, strict=False)
    missing = [k for k in missing if lora.is_adapter_key(k)]
    if missing or unexpected:
        raise JobError(
            f"{which}: adapters do not fit train.lora ({len(missing)} missing, "
            f"{len(unexpected)} unexpected, e.g. {(missing + unexpected)[:1]})"
        )
    return model


def load_model(
    path: str | Path, use_ema: bool = True, merge_lora: bool = False
) -> tuple[DiT, TrainConfig, str]:
    """(model in eval mode, its training config, which weights were loaded) from a run dir, a
    checkpoint or an exported folder. A LoRA checkpoint gives its base with the adapters applied
    (peft's layers), or folded into the base weights with `merge_lora`."""
    p = resolve_checkpoint(path)
    return _build(p, *read_weights(p, use_ema), merge_lora)


def _build(
    p: Path, sd: dict[str, Any], cfg_dict: dict[str, Any], which: str, merge_lora: bool
) -> tuple[DiT, TrainConfig, str]:
    """load_model's model from the state dict, config and description read from `p`."""
    cfg = from_dict(TrainConfig, _known_keys(TrainConfig, cfg_dict, which), source=which)
    cfg.model.attn_backend = "auto"  # the machine that samples may differ from the one that trained
    if cfg.lora.rank:
        model: Any = _adapted(p, sd, cfg, which)
        if merge_lora:
            model = lora.merge(model)
            cfg.lora.rank = 0  # a plain model from here on
            which = f"{which}, adapters merged"
        else:
            which = f"{which} + LoRA adapters"
    else:
        model = DiT(cfg.model)
        model.load_state_dict(sd, strict=True)
    return model.eval().requires_grad_(False), cfg, which


def load_weights(
    path: str | Path, use_ema: bool = True
) -> tuple[dict[str, Any], dict[str, Any], str]:
    """(fp32 state dict, training config as a dict, a description of what was loaded) from a run
    dir, a checkpoint (EMA weights when asked and present, else the ZeRO partitions consolidated
    in this process) or an exported folder. A LoRA checkpoint's adapters come merged into its
    base: the weights of a plain DiT."""
    p = resolve_checkpoint(path)
    sd, cfg, which = read_weights(p, use_ema)
    if not is_lora(cfg):
        return sd, cfg, which
    model, _, which = _build(p, sd, cfg, which, merge_lora=True)
    return dict(model.state_dict()), {**cfg, "lora": {**cfg["lora"], "rank": 0}}, which


def export_merged(ckpt: Path, out_dir: Path) -> Path:
    """`spacetime export --merge-lora`: a LoRA checkpoint's adapters folded into its base, written
    as a plain model (model.safetensors, ema.safetensors when the run kept an EMA, config.json
    with train.lora.rank 0), loadable by everything that loads exported weights."""
    cfg = read_config(ckpt)
    if not is_lora(cfg):
        raise JobError(f"{ckpt}: not a LoRA run (train.lora.rank is 0): nothing to merge")
    out_dir.mkdir(parents=True, exist_ok=True)
    kinds = [("model", False)] + ([("ema", True)] if (ckpt / "ema.safetensors").exists() else [])
    for name, use_ema in kinds:
        model, _, _ = load_model(ckpt, use_ema=use_ema, merge_lora=True)
        sd = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(sd, str(out_dir / f"{name}.safetensors"))
    (out_dir / "config.json").write_text(
        json.dumps({**cfg, "lora": {**cfg["lora"], "rank": 0}}, indent=2)
    )
    return out_dir
