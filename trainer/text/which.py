"""Which text encoder a trained model reads: the one its captions were encoded with.

A model conditioned on one encoder's states is garbage on another's. The dimension check in
`run_sample` catches a different width only; two encoders of one width (or one encoder's other
checkpoint) pass it. So sampling takes the encoder the training data names: `train.data.
text_encoder` for clips encoded on the fly, or the encoder each latent set's `job.json` records.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

from infra.storage import Storage
from infra.uris import join, normalize
from trainer.config import TrainConfig
from trainer.stage_config import latent_sets
from trainer.text.encoder import default_model_path

log = logging.getLogger(__name__)

_RECORDED = re.compile(r"^(?P<path>.*) \(config (?P<digest>[0-9a-f]+|no config)\)$")


def _config_digest(path: str) -> str:
    conf = Path(path) / "config.json"
    return hashlib.sha256(conf.read_bytes()).hexdigest()[:12] if conf.is_file() else "no config"


def dir_id(path: str) -> str:
    """A model directory by its place and its config (weights are too big to hash per run)."""
    return f"{normalize(path)} (config {_config_digest(path)})"


def recorded_encoders(cfg: TrainConfig, storage: Storage) -> dict[str, str]:
    """latent set -> the text encoder id its `spacetime encode` job recorded. Sets without a
    job.json (written by other tools) or out of reach here (a checkpoint trained on a cluster,
    sampled elsewhere) are left out: the record is a check, not a need."""
    out = {}
    for s in latent_sets(cfg):
        try:
            job = json.loads(storage.read_text(join(s, "job.json")))
        except FileNotFoundError:
            continue
        except Exception as e:  # e.g. an S3 bucket this machine has no credentials for
            log.warning("cannot read %s's job.json to check its text encoder: %s", s, e)
            continue
        enc = job.get("settings", {}).get("text_encoder")
        if enc:
            out[s] = enc
    return out


def _digest(recorded: str) -> str:
    m = _RECORDED.match(recorded)
    return m["digest"] if m else recorded


def text_encoder_for(cfg: TrainConfig, explicit: str | None, storage: Storage) -> str | None:
    """The encoder directory to sample `cfg`'s model with (None: the packaged MiniLM).

    `explicit` (--text-encoder) wins but must have the config of the encoder the latents
    record; without it, `train.data.text_encoder`, else the recorded encoder (all sets must agree),
    else MiniLM."""
    recorded = recorded_encoders(cfg, storage)
    digests = {_digest(v) for v in recorded.values()}
    if explicit:
        mine = _config_digest(explicit)
        if digests and "no config" not in digests | {mine} and mine not in digests:
            raise ValueError(
                f"text encoder {explicit} is not the one the training latents were encoded with "
                f"({'; '.join(f'{s}: {e}' for s, e in recorded.items())})"
            )
        return explicit
    if cfg.data.text_encoder:
        return cfg.data.text_encoder
    if len(digests) > 1:
        raise ValueError(
            "the training latents were encoded with different text encoders "
            f"({'; '.join(f'{s}: {e}' for s, e in recorded.items())}): pass --text-encoder"
        )
    if not recorded:
        return None
    enc = next(iter(recorded.values()))
    if _config_digest(default_model_path()) == _digest(enc):
        return None
    m = _RECORDED.match(enc)
    path = m["path"] if m else enc
    if not Path(path).is_dir():
        raise ValueError(
            f"the training latents were encoded with text encoder {enc}, which is not on this "
            "machine: pass its directory as --text-encoder"
        )
    return path
