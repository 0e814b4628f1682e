"""Frames to VAE input and back (trainer/vae/pixels.py): the one place the scale is written."""

from __future__ import annotations

import numpy as np
import torch

from trainer.vae.pixels import to_signed, to_uint8


def test_every_byte_value_round_trips_and_spans_minus_one_to_one() -> None:
    frames = np.arange(256, dtype=np.uint8).reshape(4, 8, 8, 1).repeat(3, axis=3)
    x = to_signed(frames)
    assert x.shape == (3, 4, 8, 8) and x.dtype == torch.float32
    assert x.min() == -1 and x.max() == 1
    assert np.array_equal(to_uint8(x), frames)


def test_out_of_range_values_clip_instead_of_wrapping() -> None:
    # A decoder overshoots [-1, 1]; a plain byte cast turned 1.02 (260) into 4, near black.
    v = torch.tensor([-1.5, -1.0, 1.0, 1.02, 3.0]).view(1, 5, 1, 1).expand(3, 5, 1, 1)
    assert to_uint8(v)[:, 0, 0, 0].tolist() == [0, 0, 255, 255, 255]
