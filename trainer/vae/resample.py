"""The VAE's 2x resamplers per frame (space) and per pair of frames (time), and `per_frame`.

Time is halved after the clip's first frame, which stays alone (causal: frame 0 is an image);
`first_chunk` is False for later temporal chunks of a chunked encode/decode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def per_frame(fn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Applies a 2D module to every frame: (B, C, T, H, W) -> (B, C', T, H', W')."""
    b, c, t, h, w = x.shape
    y = fn(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w))
    return y.reshape(b, t, *y.shape[1:]).permute(0, 2, 1, 3, 4)


class Downsample(nn.Module):
    def __init__(self, ch: int, temporal: bool, learned: bool = False):
        super().__init__()
        self.temporal = temporal
        self.conv = nn.Conv2d(ch, ch, 3, stride=2)
        # "learned": a pair of frames is stacked on channels and mixed by a 1x1 conv, so where
        # the object was in each frame survives; averaging the pair blends the two positions
        # into one, which the decoder can only unmix as ghost trails.
        self.mix = nn.Conv3d(2 * ch, ch, 1) if temporal and learned else None
        self.first_chunk = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = per_frame(lambda f: self.conv(F.pad(f, (0, 1, 0, 1))), x)  # type: ignore[arg-type]
        if self.temporal:
            # The clip's first frame stays alone; the following frames are merged in pairs.
            head, rest = (x[:, :, :1], x[:, :, 1:]) if self.first_chunk else (x[:, :, :0], x)
            if rest.shape[2] % 2:
                raise ValueError(
                    f"frames after the first must come in pairs here, got {rest.shape[2]}"
                )
            b, c, t, h, w = rest.shape
            pairs = rest.reshape(b, c, t // 2, 2, h, w)
            if self.mix is None or t == 0:  # t == 0: a chunk holding only the first frame
                rest = pairs.mean(3)
            else:
                rest = self.mix(pairs.transpose(2, 3).reshape(b, 2 * c, t // 2, h, w))
            x = torch.cat([head, rest], dim=2)
        return x


class Upsample(nn.Module):
    def __init__(self, ch: int, temporal: bool, learned: bool = False):
        super().__init__()
        self.temporal = temporal
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)
        # "learned": a 1x1 conv predicts both frames of a pair (channels to time), instead of
        # repeating the latent frame and leaving the motion to later layers.
        self.split = nn.Conv3d(ch, 2 * ch, 1) if temporal and learned else None
        self.first_chunk = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.temporal:
            head, rest = (x[:, :, :1], x[:, :, 1:]) if self.first_chunk else (x[:, :, :0], x)
            if self.split is None or rest.shape[2] == 0:
                rest = rest.repeat_interleave(2, dim=2)
            else:
                b, c, t, h, w = rest.shape
                two = self.split(rest).reshape(b, 2, c, t, h, w)  # (b, pair, c, t, h, w)
                rest = two.permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * t, h, w)
            x = torch.cat([head, rest], dim=2)
        return per_frame(lambda f: self.conv(F.interpolate(f, scale_factor=2.0, mode="nearest")), x)  # type: ignore[arg-type]
