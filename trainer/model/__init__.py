"""The spacetime DiT and NaViT packing. The config imports light; the model (torch) on first use."""

from trainer.lazy import lazy_getattr
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

__getattr__ = lazy_getattr(_LAZY)
