"""The spacetime DiT and NaViT packing. The config imports light; the model (torch) on first use."""

from typing import Any

from trainer.model.config import SIZES, DiTConfig

_LAZY = {
    "DiT": "trainer.model.dit",
    "PackedBatch": "trainer.model.packing",
    "drop_tokens": "trainer.model.packing",
    "pack": "trainer.model.packing",
    "pack_first_fit": "trainer.model.packing",
    "patchify": "trainer.model.packing",
    "unpack": "trainer.model.packing",
    "unpatchify": "trainer.model.packing",
}

__all__ = ["SIZES", "DiTConfig", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)
