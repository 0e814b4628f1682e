"""Each training stage's settings, resolved from `train.stages` (a pure function of the config).

Stage 0 is train.data and train.optim.lr; stage k applies stages[k-1] on top of stage k-1. Kept
apart from trainer/data/stages.py (the loaders) so that what a run trains on can be read from its
config alone: trainer.text lists a run's latent sets through it, and trainer.data imports
trainer.text.
"""

from __future__ import annotations

import dataclasses

from trainer.config import TrainConfig, TrainDataConfig


@dataclasses.dataclass
class Stage:
    number: int
    start: int
    name: str
    data: TrainDataConfig
    max_latent_frames: int
    max_latent_pixels: int
    lr: float


def stages(cfg: TrainConfig) -> list[Stage]:
    """Every stage with its settings resolved (stage 0 first)."""
    data = cfg.data
    out = [Stage(0, 0, "base", data, 0, 0, cfg.optim.lr)]
    for k, st in enumerate(cfg.stages, start=1):
        prev = out[-1]
        d = dataclasses.replace(prev.data)
        if st.sources:
            d = dataclasses.replace(d, sources=list(st.sources), latents="")
        elif st.latents:
            d = dataclasses.replace(d, latents=st.latents, sources=[])
        if st.token_budget:
            d = dataclasses.replace(d, token_budget=st.token_budget)
        out.append(
            Stage(
                k,
                st.start,
                st.name or f"stage {k}",
                d,
                st.max_latent_frames or prev.max_latent_frames,
                st.max_latent_pixels or prev.max_latent_pixels,
                st.lr or prev.lr,
            )
        )
    return out


def stage_at(cfg: TrainConfig, step: int) -> int:
    """The stage that trains step `step` + 1 (the run's position counts finished steps)."""
    return sum(1 for st in cfg.stages if st.start <= step)


def latent_sets(cfg: TrainConfig) -> list[str]:
    """Every latent set the run trains on, over all its stages and mixture sources, in order."""
    sets = [
        s for st in stages(cfg) for s in (st.data.latents, *(x.latents for x in st.data.sources))
    ]
    return list(dict.fromkeys(s for s in sets if s))
