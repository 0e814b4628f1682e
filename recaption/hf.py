"""The `hf` captioner: any transformers vision-language model from a local directory.

Multi-frame models (LLaVA family, Qwen2-VL, SmolVLM/Idefics3, ...) get every sampled frame as its own
image in one prompt; single-image captioners (BLIP, GIT, ...) get the frames tiled into one mosaic,
so they still see the whole clip rather than only its first frame. Generation is batched with left
padding; each row's prompt plus image tokens plus the generation budget is checked against the
model's context, and a row that does not fit fails with that reason instead of a truncated caption.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recaption.config import RecaptionConfig
from recaption.prompts import get_prompt

log = logging.getLogger(__name__)

# Architectures that take several images in one prompt.
MULTI_FRAME = {
    "llava",
    "llava_next",
    "llava_onevision",
    "llava_next_video",
    "qwen2_vl",
    "qwen2_5_vl",
    "idefics3",
    "smolvlm",
    "idefics2",
    "gemma3",
    "mllama",
}
# Encoder-decoder or prefix captioners whose output is the caption alone (no prompt).
UNPROMPTED = {"blip", "git", "vision-encoder-decoder"}


def check_model_dir(path: str) -> None:
    if not path:
        raise ValueError("--backend hf needs --model: a local model directory")
    if not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(f"{path}: not a transformers model directory (no config.json)")


def mosaic(frames: np.ndarray) -> np.ndarray:
    """(k, H, W, 3) -> one image with the frames in a near-square grid, in time order."""
    k, h, w, _ = frames.shape
    cols = math.ceil(math.sqrt(k))
    rows = math.ceil(k / cols)
    out = np.zeros((rows * h, cols * w, 3), dtype=np.uint8)
    for i, f in enumerate(frames):
        r, c = divmod(i, cols)
        out[r * h : (r + 1) * h, c * w : (c + 1) * w] = f
    return out


def context_limit(config: Any) -> int | None:
    for cfg in (getattr(config, "text_config", None), config):
        if cfg is None:
            continue
        for name in ("max_position_embeddings", "n_positions", "max_length"):
            v = getattr(cfg, name, None)
            if isinstance(v, int) and v > 0:
                return v
    return None


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX). Without it, oneDNN emulates
    bf16 through fp32 conversions and is slower than fp32."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto`: bf16 on a GPU and on a CPU with native bf16, fp32 otherwise. VLMs are trained and
    served in bf16; on a CPU with AVX512-BF16 the vocabulary projection, which dominates a small
    model's decode step at large batches, runs ~4x as fast as in fp32 (BENCHMARKS.md, recaption)."""
    if name == "auto":
        native = device.type == "cuda" or cpu_has_native_bf16()
        return torch.bfloat16 if native else torch.float32
    return {"bfloat16": torch.bfloat16, "float32": torch.float32}[name]


class HFCaptioner:
    backend = "hf"

    def __init__(self, cfg: RecaptionConfig):
        from transformers import AutoConfig, AutoProcessor  # transformers imports in seconds

        check_model_dir(cfg.model)
        self.cfg = cfg
        self.prompt = get_prompt(cfg.prompt)
        self.max_new_tokens = cfg.max_new_tokens or self.prompt.max_new_tokens
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = resolve_dtype(cfg.dtype, self.device)
        config = AutoConfig.from_pretrained(cfg.model, local_files_only=True)
        self.model_type = config.model_type
        self.processor = AutoProcessor.from_pretrained(cfg.model, local_files_only=True)
        tok = getattr(self.processor, "tokenizer", None)
        if tok is not None:
            tok.padding_side = "left"  # decoder-only batched generation continues after the prompt
        self.model = self._load(config).to(self.device, self.dtype).eval()
        self.multi_frame = self.model_type in MULTI_FRAME
        self.limit = context_limit(config)
        self.model_id = str(cfg.model)
        log.info(
            "hf captioner: %s (%s, %s, %s)",
            cfg.model,
            self.model_type,
            "multi-frame" if self.multi_frame else "frame mosaic",
            self.dtype_name,
        )

    @property
    def dtype_name(self) -> str:
        """The resolved dtype as the caption records and the bench name it ("bfloat16")."""
        return str(self.dtype).removeprefix("torch.")

    def _load(self, config: Any) -> Any:
        from transformers import AutoModelForImageTextToText

        try:
            return AutoModelForImageTextToText.from_pretrained(
                self.cfg.model, local_files_only=True
            )
        except ValueError:
            if self.model_type == "blip":
                from transformers import BlipForConditionalGeneration

                return BlipForConditionalGeneration.from_pretrained(
                    self.cfg.model, local_files_only=True
                )
            from transformers import AutoModelForVision2Seq

            return AutoModelForVision2Seq.from_pretrained(self.cfg.model, local_files_only=True)

    def _text(self, n_images: int) -> str | None:
        if self.model_type in UNPROMPTED:
            return None
        image_token = getattr(self.processor, "image_token", "<image>")
        template = getattr(self.processor, "chat_template", None)
        if template:
            content = [{"type": "image"}] * n_images + [{"type": "text", "text": self.prompt.text}]
            return self.processor.apply_chat_template(
                [{"role": "user", "content": content}], add_generation_prompt=True
            )
        return f"USER: {image_token * n_images}\n{self.prompt.text} ASSISTANT:"

    @torch.no_grad()
    def caption(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        images = [
            list(it["frames"]) if self.multi_frame else [mosaic(it["frames"])] for it in items
        ]
        texts = [self._text(len(im)) for im in images]
        kwargs: dict[str, Any] = {
            "images": images if self.multi_frame else [im[0] for im in images]
        }
        if texts[0] is not None:
            kwargs["text"] = texts
            kwargs["padding"] = True
        inputs = self.processor(return_tensors="pt", **kwargs)
        results: list[dict[str, Any]] = [{} for _ in items]
        ok = list(range(len(items)))
        if self.limit and "attention_mask" in inputs:
            lengths = inputs["attention_mask"].sum(-1).tolist()
            ok = []
            for i, n in enumerate(lengths):
                if n + self.max_new_tokens > self.limit:
                    results[i] = {
                        "text": None,
                        "error": f"context: prompt and {len(images[i])} frame(s) take {n} tokens, "
                        f"+{self.max_new_tokens} to generate > the model's {self.limit}",
                    }
                else:
                    ok.append(i)
            if len(ok) < len(items):
                if not ok:
                    return results
                # Re-run the processor on the rows that fit, so padding matches what is generated.
                sub = [items[i] for i in ok]
                for i, r in zip(ok, self.caption(sub), strict=True):
                    results[i] = r
                return results
        inputs = {
            k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device))
            for k, v in inputs.items()
            if isinstance(v, torch.Tensor)
        }
        gen = {"max_new_tokens": self.max_new_tokens, "do_sample": self.cfg.temperature > 0}
        if self.cfg.temperature > 0:
            gen["temperature"] = self.cfg.temperature
        out = self.model.generate(**inputs, **gen)
        if texts[0] is not None and not self.model.config.is_encoder_decoder:
            out = out[:, inputs["input_ids"].shape[1] :]
        decoded = self.processor.batch_decode(out, skip_special_tokens=True)
        for i, text in zip(ok, decoded, strict=True):
            results[i] = {"text": text.strip()}
        return results
