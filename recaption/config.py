"""Configuration of `spacetime recaption` (no heavy imports: the CLI loads it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class RecaptionConfig:
    backend: Literal["stats", "hf", "vllm"] = "stats"
    model: str = ""
    """Local model directory (hf, vllm)."""
    prompt: str = "detailed"
    """Prompt template name (recaption.prompts)."""
    frames: int = 8
    """Frames sampled per clip, spread over its duration."""
    max_side: int = 384
    """Sampled frames are resized so their longer side is at most this."""
    batch_size: int = 8
    """Clips per generate() call."""
    workers: int = 0
    """Captioner actors (one model each); 0: one per GPU, or one per CPU on a CPU cluster."""
    max_new_tokens: int = 0
    """Generation length cap (0: the prompt's own)."""
    temperature: float = 0.0
    """0: greedy decoding."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """auto: bf16 on a GPU or a CPU with native bf16 (AVX512-BF16, AMX), else fp32."""
    retries: int = 2
    """Retries of a failed batch (then each row is tried alone and failures are recorded)."""

    def validate(self) -> None:
        if self.frames < 1 or self.batch_size < 1 or self.max_side < 16:
            raise ValueError("frames and batch_size must be >= 1 and max_side >= 16")
        if min(self.workers, self.retries, self.max_new_tokens) < 0 or not self.temperature >= 0:
            raise ValueError("workers, retries, max_new_tokens and temperature must be >= 0")
