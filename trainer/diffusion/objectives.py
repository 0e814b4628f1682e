"""The training objective named by the config, as an object that owns noising, loss and sampling."""

from __future__ import annotations

from typing import Any

from trainer.diffusion.config import DDPMConfig, FlowConfig
from trainer.diffusion.ddpm import GaussianDiffusion
from trainer.diffusion.flow import RectifiedFlow


def build_diffusion(objective: str, flow: FlowConfig, ddpm: DDPMConfig) -> Any:
    """`objective` "flow": rectified flow; "ddpm": Gaussian diffusion (DDPM, DDIM sampling)."""
    if objective == "flow":
        return RectifiedFlow(flow)
    if objective == "ddpm":
        return GaussianDiffusion(ddpm)
    raise ValueError(f"objective must be 'flow' or 'ddpm', got {objective!r}")
