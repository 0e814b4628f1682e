"""Still images (jpg, png, webp) as 1-frame clips at native resolution.

Sora-style training mixes images with videos as 1-frame clips; storing them as 1-frame H.264
clips in the same shards keeps recaption, encode and train unchanged (the causal VAE encodes a
single frame as its first frame alone). EXIF orientation is applied, so a portrait photo stays
portrait; the size follows the same pixel budget and rounding as video clips.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageOps

from data_pipeline.clips import encode_still
from data_pipeline.config import IMAGE_EXTENSIONS, ShardConfig
from data_pipeline.probe import InputError, Probe, output_size
from data_pipeline.samples import SCHEMA_VERSION, keep_or_reject
from data_pipeline.scores import ClipScorer
from data_pipeline.sources import Source

# EXIF orientation -> the display rotation it applies, counter-clockwise degrees as in Probe
# (2, 4, 5 and 7 also mirror; the probe records the tag itself too).
_ROTATION = {1: 0, 2: 0, 3: 180, 4: 180, 5: -90, 6: -90, 7: 90, 8: 90}


def is_image(rel: str) -> bool:
    return rel.lower().endswith(tuple(IMAGE_EXTENSIONS))


def process_image(
    path: str, source: Source, cfg: ShardConfig, record: dict[str, Any]
) -> list[dict[str, Any]]:
    """The 1-frame clip of one image (or none: too small, filtered), as staged samples."""
    try:
        with Image.open(path) as im:
            coded = im.size
            if coded[0] * coded[1] > cfg.max_input_pixels:
                raise InputError(
                    "probe", f"too large: {coded[0]}x{coded[1]} > {cfg.max_input_pixels} pixels"
                )
            fmt, mode = (im.format or "").lower(), im.mode
            orientation = int(im.getexif().get(0x0112, 1))
            rgb = ImageOps.exif_transpose(im).convert("RGB")
    except (OSError, Image.DecompressionBombError, SyntaxError) as e:
        raise InputError("probe", f"unreadable image: {e}") from None
    w, h = rgb.size
    probe = Probe(
        container="image",
        codec=fmt,
        profile=f"exif orientation {orientation}",
        pix_fmt=mode,
        width=coded[0],
        height=coded[1],
        sar="1:1",
        rotation=_ROTATION.get(orientation, 0),
        display_width=w,
        display_height=h,
        fps=0.0,
        fps_fraction="0/1",
        duration=0.0,
        frames=1,
        audio=None,
    )
    record["probe"], record["scenes"], record["seconds_in"] = probe.to_dict(), 1, 0.0
    width, height = output_size(w, h, cfg.max_pixels, cfg.size_multiple)
    if min(width, height) < cfg.min_side:
        record["dropped"]["too_small"] = 1
        return []
    pixels = np.asarray(
        rgb.resize((width, height), Image.Resampling.BOX if width < w else Image.Resampling.BICUBIC)
    )
    data, planes = encode_still(np.ascontiguousarray(pixels), cfg)
    scorer = ClipScorer(1, 1.0, cfg.scores)
    scorer.add(planes)
    key = f"{source.source_id}-s000-c00"
    meta = {
        "schema_version": SCHEMA_VERSION,
        "kind": "image",
        "key": key,
        "source": source.uri,
        "source_rel": source.rel,
        "scene": 0,
        "clip": 0,
        "start_frame": 0,
        "end_frame": 1,
        "start_s": 0.0,
        "end_s": 0.0,
        "fps": 1.0,
        "fps_fraction": "1/1",
        "frames": 1,
        "seconds": 0.0,
        "width": width,
        "height": height,
        "scores": scorer.result(),
        "crop": None,
        "timing": None,
        "probe": probe.to_dict(),
    }
    sample = keep_or_reject(meta, data, source, cfg, record)
    return [] if sample is None else [sample]
