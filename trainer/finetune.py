"""Fine-tuning: a new run that starts from trained weights (`spacetime train --init PATH`).

The weights come from a run dir, a checkpoint (ZeRO partitions consolidated here, or its EMA) or
an exported folder, and are loaded into the freshly built model before DeepSpeed wraps it, so every
ZeRO stage starts from them; the optimizer, schedule, EMA and step count start afresh. A resumed
run ignores `init`: its checkpoint already holds the fine-tuned weights; except a LoRA run
(`train.lora`), whose checkpoints hold only its adapters: its base is loaded from `init` on every
launch and checked against the digest the run recorded.
"""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

from infra.errors import JobError
from trainer import lora
from trainer.config import TrainConfig
from trainer.weights import load_weights

log = logging.getLogger("trainer.train")


def load_init(model: nn.Module, cfg: TrainConfig, rank: int) -> str:
    """Loads `cfg.init` into `model`; returns what was loaded. A model of another shape, or one
    that learned another VAE's latents, is refused by name."""
    try:
        sd, init_cfg, which = load_weights(cfg.init, use_ema=cfg.init_weights == "ema")
    except FileNotFoundError as e:
        raise JobError(f"train.init: {e}") from None
    theirs = init_cfg.get("model", {}).get("latent_space", "")
    ours = cfg.model.latent_space
    if theirs and ours and theirs != ours:
        raise JobError(
            f"train.init={cfg.init}: the model learned latents of {theirs}; train.data holds "
            f"latents of {ours}. Fine-tune on latents of the same VAE."
        )
    missing, unexpected = set(model.state_dict()) - set(sd), set(sd) - set(model.state_dict())
    if missing or unexpected:
        raise JobError(
            f"train.init={which}: not this model's weights ({len(missing)} missing, e.g. "
            f"{sorted(missing)[:1]}; {len(unexpected)} unexpected, e.g. {sorted(unexpected)[:1]}); "
            "set train.model to the size and settings it was trained with"
        )
    own = model.state_dict()
    for k, v in sd.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise JobError(
                f"train.init={which}: {k} is {tuple(v.shape)} there, {tuple(own[k].shape)} in "
                "this model; set train.model to the settings it was trained with"
            )
    model.load_state_dict(sd, strict=True)
    if rank == 0:
        log.info("initialised from %s", which)
    return which


def prepare_lora(
    model: nn.Module, train_cfg: Any, rank: int, resumed: dict[str, Any] | None
) -> str:
    """A LoRA run's model before DeepSpeed wraps it: the base weights of `train.init` loaded (on a
    resume too: checkpoints hold only adapters), checked against the digest the run recorded when
    resumed, then the adapters added. Returns the base's digest (kept in the run state)."""
    if not train_cfg.init:  # checked here: --init is applied after the config is validated
        raise JobError(
            "train.lora.rank is set without train.init: adapters fine-tune trained weights; "
            "name them with --init (run dir, checkpoint or exported folder)"
        )
    which = load_init(model, train_cfg, rank)
    base = lora.digest(model.state_dict())
    if resumed is not None:
        recorded = (resumed.get("lora_base") or {}).get("digest")
        if recorded != base:
            raise JobError(
                f"train.init={which}: its weights (digest {base}) are not the base this LoRA run "
                f"was trained on (digest {recorded}); resume with the original base weights"
            )
    lora.apply(model, train_cfg.lora)
    if rank == 0:
        n, total = lora.trainable(model)
        log.info(
            "LoRA rank %d on %s: %d trainable parameters of %d (%.2f%%); the base is frozen",
            train_cfg.lora.rank,
            ", ".join(train_cfg.lora.targets),
            n,
            total,
            100 * n / total,
        )
    return base
