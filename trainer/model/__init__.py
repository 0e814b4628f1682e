"""The spacetime DiT and NaViT packing."""

from trainer.model.dit import SIZES, DiT, DiTConfig
from trainer.model.packing import (
    PackedBatch,
    drop_tokens,
    pack,
    pack_first_fit,
    patchify,
    unpack,
    unpatchify,
)

__all__ = [
    "SIZES",
    "DiT",
    "DiTConfig",
    "PackedBatch",
    "drop_tokens",
    "pack",
    "pack_first_fit",
    "patchify",
    "unpack",
    "unpatchify",
]
