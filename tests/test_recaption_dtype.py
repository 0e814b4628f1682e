"""The hf captioner's dtype: `auto` picks bf16 only where the hardware computes it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from recaption.config import RecaptionConfig
from recaption.hf import HFCaptioner, cpu_has_native_bf16, resolve_dtype
from tests.test_recaption import build_llava


def test_auto_is_bf16_only_on_a_gpu_or_a_cpu_with_native_bf16() -> None:
    cpu = torch.device("cpu")
    assert resolve_dtype("float32", cpu) == torch.float32
    assert resolve_dtype("bfloat16", cpu) == torch.bfloat16
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    # torch's probe against the kernel's own view of the CPU: AVX512-BF16 or AMX tiles.
    flags = set(
        " ".join(
            ln.split(":", 1)[1]
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("flags")
        ).split()
    )
    if "avx512_bf16" in flags:
        assert cpu_has_native_bf16()
    elif "amx_tile" not in flags:  # (AMX alone also needs the kernel's per-process permission)
        assert not cpu_has_native_bf16()
    native = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    assert resolve_dtype("auto", cpu) == native


def test_captioner_loads_in_the_resolved_dtype_and_captions_in_both(tmp_path: Path) -> None:
    build_llava(tmp_path / "llava")
    frames = np.random.default_rng(0).integers(0, 255, (2, 48, 64, 3), dtype=np.uint8)
    items = [{"frames": frames, "times": [0.0, 0.5], "info": {}}] * 3
    for name in ("auto", "float32", "bfloat16"):
        cfg = RecaptionConfig(
            backend="hf", model=str(tmp_path / "llava"), max_new_tokens=6, dtype=name
        )
        cap = HFCaptioner(cfg)
        want = resolve_dtype(name, torch.device("cpu"))
        assert cap.dtype == want and {p.dtype for p in cap.model.parameters()} == {want}
        out = cap.caption(items)
        assert len(out) == 3 and all(r["text"] for r in out), (name, out)
        assert out[0] == out[1] == out[2]  # same clip in a batch of three: same caption
