"""Fine-tuning: a new run that starts from trained weights (`spacetime train --init PATH`).

The weights come from a run dir, a checkpoint (ZeRO partitions consolidated here, or its EMA) or
an exported folder, and are loaded into the freshly built model before DeepSpeed wraps it, so every
ZeRO stage starts from them; the optimizer, schedule, EMA and step count start afresh. A resumed
run ignores `init`: its checkpoint already holds the fine-tuned weights.
"""

from __future__ import annotations

import logging

from torch import nn

from infra.errors import JobError
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
