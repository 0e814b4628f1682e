"""Probing a video with PyAV: what it holds and how it is meant to be displayed."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any

import av


class InputError(Exception):
    """An input that cannot become clips; `stage` and `reason` go to errors.jsonl."""

    def __init__(self, stage: str, reason: str):
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason


@dataclass
class Probe:
    container: str
    codec: str
    profile: str | None
    pix_fmt: str | None
    width: int
    """Coded width in pixels (before rotation and aspect correction)."""
    height: int
    sar: str
    """Sample (pixel) aspect ratio as 'num:den'; '1:1' for square pixels."""
    rotation: int
    """Display rotation in degrees, counter-clockwise, as in the display matrix (0, ±90, 180)."""
    display_width: int
    """Width as displayed: SAR applied, then rotation."""
    display_height: int
    fps: float
    fps_fraction: str
    duration: float
    frames: int
    """Frame count from the container header; 0 when the container does not say."""
    audio: str | None
    """'codec rate Hz channels ch', or None without audio."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def display_size(width: int, height: int, sar: Fraction, rotation: int) -> tuple[int, int]:
    """Displayed (width, height): non-square pixels stretch the width, then ±90° swaps sides."""
    w = width * float(sar) if sar > 0 else float(width)
    h = float(height)
    if rotation % 180:
        w, h = h, w
    return max(1, round(w)), max(1, round(h))


def output_size(width: int, height: int, max_pixels: int, multiple: int) -> tuple[int, int]:
    """Native resolution unless above the pixel budget (then scaled down keeping aspect ratio),
    each side a multiple of `multiple` (at least one). Of the sides next to the exact size, the
    pair within the budget whose aspect ratio is closest to the source's wins (rounding each side
    on its own distorted small clips by up to ~6%, e.g. 1.67 -> 1.75); near-ties go to the
    pair whose area is closest to the exact size's."""
    scale = min(1.0, math.sqrt(max_pixels / (width * height)))
    w, h = width * scale, height * scale
    aspect = width / height

    def near(x: float) -> set[int]:
        lo = max(multiple, math.floor(x / multiple) * multiple)
        return {lo, lo + multiple}

    fits = [(ow, oh) for ow in near(w) for oh in near(h) if ow * oh <= max_pixels]
    if fits:

        def err(s: tuple[int, int]) -> float:
            return abs(math.log(s[0] / s[1] / aspect))

        best = min(err(s) for s in fits)
        close = [s for s in fits if err(s) <= best + 0.005]
        return min(close, key=lambda s: abs(s[0] * s[1] - w * h))
    ow, oh = (
        max(multiple, round(w / multiple) * multiple),
        max(multiple, round(h / multiple) * multiple),
    )
    # Tiny budgets: step the larger side down until it fits.
    while ow * oh > max_pixels and max(ow, oh) > multiple:
        if ow >= oh:
            ow -= multiple
        else:
            oh -= multiple
    return ow, oh


def _normalise_rotation(deg: float | None) -> int:
    if not deg:
        return 0
    r = round(deg / 90.0) * 90
    r = ((r + 180) % 360) - 180
    return -180 if r == 180 else r


def probe(path: str, max_pixels: int | None = None) -> Probe:
    """Reads container and stream facts and decodes the first frame (codec check, rotation).

    Raises InputError("probe", reason) for anything that cannot be a video input.
    """
    try:
        container = av.open(path)
    except av.error.FileNotFoundError:
        raise InputError("probe", "file not found") from None
    except av.error.InvalidDataError as e:
        raise InputError(
            "probe", f"unreadable: not a video container ({e.strerror or e})"
        ) from None
    except av.error.FFmpegError as e:
        raise InputError("probe", f"unreadable: {e}") from None
    with container:
        if not container.streams.video:
            kind = "audio-only" if container.streams.audio else "no streams"
            raise InputError("probe", f"no video stream ({kind})")
        v = container.streams.video[0]
        cc = v.codec_context
        if cc is None:  # FFmpeg knows no decoder for this stream
            raise InputError("probe", "unsupported codec: no decoder for the video stream")
        codec = cc.codec.canonical_name  # 'av1', not the decoder's name 'libdav1d'
        if v.width <= 0 or v.height <= 0:
            raise InputError("probe", f"unsupported codec or missing dimensions (codec '{codec}')")
        if max_pixels and v.width * v.height > max_pixels:
            raise InputError(
                "probe", f"too large: {v.width}x{v.height} exceeds {max_pixels} pixels"
            )
        try:
            first = next(container.decode(v), None)
        except av.error.FFmpegError as e:
            raise InputError("probe", f"cannot decode codec '{codec}': {e}") from None
        if first is None:
            raise InputError("probe", f"no decodable frames (codec '{codec}')")
        rotation = _normalise_rotation(getattr(first, "rotation", 0))
        sar = v.sample_aspect_ratio or Fraction(1, 1)
        sar = Fraction(sar) if sar > 0 else Fraction(1, 1)
        rate = v.average_rate or v.guessed_rate or v.base_rate
        fps = float(rate) if rate else 0.0
        if v.duration is not None and v.time_base is not None:
            duration = float(v.duration * v.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000
        else:
            duration = 0.0
        dw, dh = display_size(v.width, v.height, sar, rotation)
        audio = None
        if container.streams.audio:
            a = container.streams.audio[0]
            acc = a.codec_context
            audio = f"{acc.name} {acc.sample_rate}Hz {acc.channels}ch"
        return Probe(
            container=container.format.name,
            codec=codec,
            profile=v.profile,
            pix_fmt=cc.pix_fmt,
            width=v.width,
            height=v.height,
            sar=f"{sar.numerator}:{sar.denominator}",
            rotation=rotation,
            display_width=dw,
            display_height=dh,
            fps=fps,
            fps_fraction=str(rate) if rate else "0",
            duration=duration,
            frames=int(v.frames or 0),
            audio=audio,
        )
