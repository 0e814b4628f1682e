"""The VAE trainer's long crops (vae_train.long_frames): which steps take them, from which clips,
and that their posterior noise fits the latent the VAE makes of them."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from trainer.vae.config import VAETrainConfig
from trainer.vae.model import CausalVAE
from trainer.vae.train import crop, step_batch, step_frames, step_noise


def _cfg(**kw: object) -> VAETrainConfig:
    base: dict[str, object] = dict(
        crop=16, batch_size=4, space_stride=4, time_stride=2, frames=5, patch=2
    )
    cfg = VAETrainConfig(**(base | kw))  # type: ignore[arg-type]
    cfg.validate()
    return cfg


def _clips() -> list[np.ndarray]:
    """Six 5-frame clips filled with 0 and three 13-frame clips filled with 255."""
    short = [np.zeros((5, 16, 16, 3), np.uint8) for _ in range(6)]
    long = [np.full((13, 16, 16, 3), 255, np.uint8) for _ in range(3)]
    return short + long


def test_one_step_in_long_every_takes_long_crops() -> None:
    cfg = _cfg(long_frames=9, long_every=4)
    assert [step_frames(cfg, s) for s in range(8)] == [5, 5, 5, 9, 5, 5, 5, 9]
    assert {step_frames(_cfg(), s) for s in range(8)} == {5}


def test_long_steps_crop_only_the_clips_that_hold_them() -> None:
    cfg = _cfg(long_frames=9, long_every=2)
    train = _clips()
    long = step_batch(train, cfg, 1, 0, 1)
    assert long.shape == (4, 3, 9, 16, 16)
    assert torch.all(long == 1.0)  # every crop from a 13-frame clip (the 5-frame ones are 0s)
    # Short steps draw from every clip: over a few steps both kinds appear.
    short = torch.cat([step_batch(train, cfg, s, 0, 1) for s in (0, 2, 4, 6)])
    assert short.shape[2] == 5 and {-1.0, 1.0} <= set(short.unique().tolist())


def test_two_ranks_split_a_long_step_as_one_rank_draws_it() -> None:
    cfg = _cfg(long_frames=9, long_every=2)
    train = [np.random.default_rng(i).integers(0, 256, (13, 20, 20, 3), np.uint8) for i in range(5)]
    whole = step_batch(train, cfg, 3, 0, 1)
    halves = torch.cat([step_batch(train, cfg, 3, r, 2) for r in range(2)])
    assert torch.equal(whole, halves)


def test_no_clip_long_enough_is_an_error_naming_the_setting() -> None:
    cfg = _cfg(long_frames=9, long_every=2)
    with pytest.raises(ValueError, match="long_frames=9"):
        step_batch(_clips()[:6], cfg, 1, 0, 1)


def test_long_step_noise_fits_the_latent_of_a_long_crop() -> None:
    cfg = _cfg(long_frames=9, long_every=2)
    vae = CausalVAE(cfg.vae_config())
    short_latent = tuple(vae.encode(torch.zeros(1, 3, 5, 16, 16)).mean.shape[1:])
    long_latent = tuple(vae.encode(torch.zeros(1, 3, 9, 16, 16)).mean.shape[1:])
    assert tuple(step_noise(cfg, short_latent, 0, 0, 1).shape[1:]) == short_latent
    assert tuple(step_noise(cfg, short_latent, 1, 0, 1).shape[1:]) == long_latent


@pytest.mark.parametrize("long_frames", [5, 3, 8])
def test_long_frames_must_be_longer_and_fit_the_time_stride(long_frames: int) -> None:
    with pytest.raises(ValueError, match="long_frames"):
        _cfg(long_frames=long_frames)
    with pytest.raises(ValueError, match="long_every"):
        _cfg(long_frames=9, long_every=0)


def _dot_clip(y: int, x: int) -> np.ndarray:
    """A grey 5x64x96 clip with one 4x4 red square at (y, x): ~0.3% of the pixels."""
    clip = np.full((5, 64, 96, 3), 128, np.uint8)
    clip[:, y : y + 4, x : x + 4] = (220, 30, 30)
    return clip


def test_content_crops_hold_the_object_where_uniform_crops_mostly_miss_it() -> None:
    clip = _dot_clip(50, 80)
    red = torch.tensor([220, 30, 30]) / 127.5 - 1

    def holds(c: torch.Tensor) -> bool:
        return bool(((c - red.view(3, 1, 1, 1)).abs().amax(0) < 1e-3).any())

    centred = _cfg(content_crops=1.0)
    crops = [crop(clip, centred, random.Random(i)) for i in range(40)]
    assert all(c.shape == (3, 5, 16, 16) and holds(c) for c in crops)
    uniform = [crop(clip, _cfg(), random.Random(i)) for i in range(40)]
    assert sum(holds(c) for c in uniform) < 10
    # Half content crops: some of each; a plain clip (no content) falls back to uniform crops.
    half = [holds(crop(clip, _cfg(content_crops=0.5), random.Random(i))) for i in range(40)]
    assert 10 < sum(half) < 40
    plain = np.full((5, 64, 96, 3), 128, np.uint8)
    assert crop(plain, centred, random.Random(0)).shape == (3, 5, 16, 16)


def test_content_crops_off_draws_the_uniform_crops_of_before() -> None:
    # The share is drawn only when it is on, so existing runs (and their resumes) crop as before.
    clip = np.random.default_rng(0).integers(0, 256, (9, 40, 40, 3), np.uint8)
    rng = random.Random(3)
    t0, y0, x0 = rng.randrange(0, 5), rng.randrange(0, 25), rng.randrange(0, 25)
    want = torch.from_numpy(clip[t0 : t0 + 5, y0 : y0 + 16, x0 : x0 + 16]).permute(3, 0, 1, 2)
    assert torch.equal(crop(clip, _cfg(), random.Random(3)), want.float() / 127.5 - 1)
    with pytest.raises(ValueError, match="content_crops"):
        _cfg(content_crops=1.5)
