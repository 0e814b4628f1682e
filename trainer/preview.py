"""Sample previews during training: rank 0 samples the fixed prompts from the checkpoint it just
published (EMA weights when there are some) into {run}/previews/step-N/ (mp4s and a contact sheet),
TensorBoard and, for S3 runs, the run's folder there. A failed preview is logged, never fatal."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch.distributed as dist
from PIL import Image

from infra.uris import join
from trainer.checkpoint import tag_for
from trainer.sample import run_sample

log = logging.getLogger(__name__)


def preview(trainer: Any, metrics: Any) -> None:
    """Collective: the other ranks wait at the barrier (previews must take less than
    train.dist_timeout_s)."""
    p = trainer.cfg.preview
    if trainer.d.rank == 0:
        tag = tag_for(trainer.step)
        out = trainer.local / "previews" / tag
        t0 = time.monotonic()
        try:
            run_sample(
                str(trainer.ckpt.local / tag),
                p.vae or trainer.cfg.data.vae,
                p.prompts,
                str(out),
                p.sample,
                text_encoder=p.text_encoder or trainer.cfg.data.text_encoder,
                storage=trainer.storage,
            )
        except Exception as e:  # previews are a view on training, never a reason to stop it
            log.warning("preview at step %d failed: %s", trainer.step, e)
        else:
            sheet = np.asarray(Image.open(out / "contact_sheet.png").convert("RGB"))
            metrics.image("preview", sheet, trainer.step)
            if trainer.remote:
                for f in sorted(out.iterdir()):
                    trainer.storage.upload(f, join(trainer.remote, "previews", tag, f.name))
            log.info(
                "preview: %d prompts in %.1fs -> %s", len(p.prompts), time.monotonic() - t0, out
            )
    dist.barrier()
