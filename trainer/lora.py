"""LoRA fine-tuning of the DiT (`train.lora`), with peft's LoRA layers.

peft injects its layers in place: the model stays a DiT with the same forward, each targeted
`nn.Linear` becomes base + (alpha / rank) * B @ A, every base weight is frozen and B starts at
zero (the adapted model starts as the base). Only the adapters are trained, averaged by the EMA
and saved (DeepSpeed's `exclude_frozen_parameters`), so a LoRA run's checkpoints hold no base
weights: the base is read from `train.init` again on resume, export and sampling, and its digest,
recorded in the run state, must match (a base changed under a run would make its adapters
meaningless).
"""

from __future__ import annotations

import hashlib
import logging

import torch
from torch import nn

from infra.errors import JobError
from trainer.model.config import LoraConfig

log = logging.getLogger("trainer.train")


def is_adapter_key(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def _targets(model: nn.Module, cfg: LoraConfig) -> list[str]:
    """The linears `cfg.targets` name (peft's rule: the name itself or a suffix after a dot); a
    target that names no linear is refused rather than silently left out."""
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    hit: list[str] = []
    for t in cfg.targets:
        names = [n for n in linears if n == t or n.endswith("." + t)]
        if not names:
            raise JobError(
                f"train.lora.targets: {t!r} names no linear layer of the DiT (its projections: "
                "q, kv, out, mlp.0, mlp.2)"
            )
        hit += names
    return hit


def apply(model: nn.Module, cfg: LoraConfig) -> nn.Module:
    """Adds adapters to `model` in place and freezes everything else; returns it. Draws A's
    initialisation from the global torch RNG (seeded by the caller)."""
    from peft import LoraConfig as PeftLora  # peft imports in seconds; only LoRA runs need it
    from peft import inject_adapter_in_model

    _targets(model, cfg)
    peft_cfg = PeftLora(
        r=cfg.rank,
        lora_alpha=cfg.alpha or cfg.rank,
        target_modules=list(cfg.targets),
        lora_dropout=cfg.dropout,
        bias="none",
    )
    inject_adapter_in_model(peft_cfg, model)
    return model


def merge(model: nn.Module) -> nn.Module:
    """Folds every adapter into its base weight and puts the plain linears back, in place: the
    result is a plain DiT whose state dict loads without peft."""
    from peft.tuners.lora import LoraLayer

    for name, m in list(model.named_modules()):
        if isinstance(m, LoraLayer):
            m.merge(safe_merge=True)  # raises on a non-finite merged weight
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, m.get_base_layer())
    return model


def digest(sd: dict[str, torch.Tensor]) -> str:
    """A content digest of a state dict (names, shapes, dtypes and bytes), in key order."""
    h = hashlib.sha256()
    for k in sorted(sd):
        t = sd[k].detach().cpu().contiguous()
        h.update(f"{k}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:32]


def trainable(model: nn.Module) -> tuple[int, int]:
    """(trainable, all) parameter counts."""
    ps = list(model.parameters())
    return sum(p.numel() for p in ps if p.requires_grad), sum(p.numel() for p in ps)
