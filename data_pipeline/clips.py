"""Encoding planned clips at native resolution: one decode pass writes every clip of a source.

Each output frame is cropped to the picture (letterbox bars away) and scaled in the coded
orientation (so non-square pixels are corrected by the same resize), then rotated as the display
matrix says, then scored (data_pipeline/scores.py) and encoded with libx264 (yuv420p, CRF, one
thread and settings chosen so the bytes are the same on every run and host).
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import av
import numpy as np

from data_pipeline.config import ShardConfig
from data_pipeline.probe import InputError, Probe
from data_pipeline.scenes import ClipPlan
from data_pipeline.scores import ClipScorer


def _encoder(
    width: int, height: int, rate: Fraction, cfg: ShardConfig
) -> tuple[av.container.OutputContainer, av.video.stream.VideoStream, io.BytesIO]:
    buf = io.BytesIO()
    out = av.open(buf, "w", format="mp4")
    s = out.add_stream("libx264", rate=rate)
    s.width, s.height, s.pix_fmt = width, height, "yuv420p"
    s.time_base = Fraction(1, 1) / rate
    s.codec_context.thread_count = 1
    # One thread and no macroblock-tree rate control: x264's mbtree SIMD reads uninitialised
    # memory at some widths, which made the same clip encode to different bytes from run to run
    # (measured: 2-5 variants in 6 encodes; with mbtree=0, 1). Shards must be reproducible.
    s.options = {
        "crf": str(cfg.crf),
        "preset": cfg.x264_preset,
        "threads": "1",
        "x264-params": "mbtree=0",
    }
    return out, s, buf


def encode_clips(
    path: str,
    probe: Probe,
    plans: list[ClipPlan],
    size: tuple[int, int],
    rate: Fraction,
    cfg: ShardConfig,
    deadline: float,
    crop: tuple[int, int, int, int] | None = None,
) -> Iterator[tuple[ClipPlan, bytes, dict[str, Any]]]:
    """Yields (plan, mp4 bytes, scores) for each plan, in order. `size` is the displayed (width,
    height) of the output, `crop` the (x0, y0, x1, y1) picture box in coded pixels."""
    if not plans:
        return
    out_w, out_h = size
    rot = probe.rotation
    # Scale in coded orientation: a ±90° rotation swaps which side becomes the width.
    sw, sh = (out_h, out_w) if rot % 180 else (out_w, out_h)
    k = (rot // 90) % 4  # np.rot90 turns counter-clockwise, like the display matrix angle
    order = sorted(plans, key=lambda p: p.start)
    # Source frame -> the clips that use it, once per output frame (VFR resampling repeats frames).
    need: dict[int, list[int]] = {}
    for ci, p in enumerate(order):
        for f in p.src_frames:
            need.setdefault(f, []).append(ci)
    last_needed = max(need)
    cur: int | None = None
    enc = None
    scorer: ClipScorer | None = None
    written = 0
    with av.open(path) as container:
        stream = container.streams.video[0]
        # Single-threaded decoding: Ray already runs one source per core, and FFmpeg's frame
        # threads deadlocked in avcodec_free_context after a mid-stream decode error.
        stream.codec_context.thread_count = 1
        i = -1
        try:
            for frame in container.decode(stream):
                i += 1
                if time.monotonic() > deadline:
                    raise InputError(
                        "encode",
                        f"timeout: still encoding at frame {i} after {cfg.file_timeout_s:.0f}s",
                    )
                if i > last_needed:
                    break
                uses = need.get(i)
                if not uses:
                    continue
                if crop is not None:
                    frame = _crop(frame, crop)
                planes = _yuv_planes(
                    frame.reformat(width=sw, height=sh, format="yuv420p", interpolation="AREA")
                )
                if k:
                    planes = [np.ascontiguousarray(np.rot90(p, k)) for p in planes]
                for ci in uses:
                    if cur != ci:
                        if enc is not None:
                            yield order[cur], _finish(*enc), scorer.result()  # type: ignore[index,union-attr]
                        cur, enc, written = ci, _encoder(out_w, out_h, rate, cfg), 0
                        scorer = ClipScorer(len(order[ci].src_frames), float(rate), cfg.scores)
                    scorer.add(planes)
                    vf = _frame_from_planes(planes)
                    vf.pts = written
                    written += 1
                    for pkt in enc[1].encode(vf):
                        enc[0].mux(pkt)
        except av.error.FFmpegError as e:
            raise InputError("encode", f"decode/encode error at frame {i}: {e}") from None
    if enc is not None:
        yield order[cur], _finish(*enc), scorer.result()  # type: ignore[index,union-attr]


def _crop(frame: av.VideoFrame, box: tuple[int, int, int, int]) -> av.VideoFrame:
    """The picture inside `box` (even coordinates) as a new yuv420p frame. Cropping the planes by
    hand: PyAV's reformat scales but does not crop, and a filter graph per source costs more code."""
    x0, y0, x1, y1 = box
    planes = _yuv_planes(frame.reformat(format="yuv420p"))
    return _frame_from_planes(
        [planes[0][y0:y1, x0:x1]] + [p[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2] for p in planes[1:]]
    )


def _yuv_planes(frame: av.VideoFrame) -> list[np.ndarray]:
    """Copies of the visible Y, U, V pixels of a yuv420p frame."""
    out = []
    for i, plane in enumerate(frame.planes):
        w, h = (
            (frame.width, frame.height)
            if i == 0
            else ((frame.width + 1) // 2, (frame.height + 1) // 2)
        )
        rows = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:h, :w]
        out.append(rows.copy())
    return out


def _frame_from_planes(planes: list[np.ndarray]) -> av.VideoFrame:
    """A yuv420p frame from (possibly rotated) planes, row padding zeroed so every byte the encoder
    is handed is defined."""
    h, w = planes[0].shape
    frame = av.VideoFrame(w, h, "yuv420p")
    for plane, data in zip(frame.planes, planes, strict=True):
        rows = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)
        rows[:] = 0
        rows[: data.shape[0], : data.shape[1]] = data
    return frame


def _finish(
    out: av.container.OutputContainer, stream: av.video.stream.VideoStream, buf: io.BytesIO
) -> bytes:
    for pkt in stream.encode(None):
        out.mux(pkt)
    out.close()
    return buf.getvalue()


def encode_still(rgb: np.ndarray, cfg: ShardConfig) -> tuple[bytes, list[np.ndarray]]:
    """A still image (H, W, 3 uint8, sides even) as a 1-frame clip: (mp4 bytes, its yuv420p
    planes, which the scorer reads), encoded exactly like video clips."""
    h, w = rgb.shape[:2]
    planes = _yuv_planes(av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p"))
    enc = _encoder(w, h, Fraction(1), cfg)
    vf = _frame_from_planes(planes)
    vf.pts = 0
    for pkt in enc[1].encode(vf):
        enc[0].mux(pkt)
    return _finish(*enc), planes
