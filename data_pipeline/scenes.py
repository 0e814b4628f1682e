"""Scene analysis: one decode pass finds hard cuts, fades to black and motion; then clip planning.

Hard cuts come from PySceneDetect's ContentDetector (HSV frame difference) fed with small frames we
decode ourselves, so the video is decoded once for all measurements. Fades and black stretches are
found from mean brightness: dark frames belong to no clip, and a dark stretch between two scenes is
one transition whose cut is placed midway between fade-out and fade-in (PySceneDetect's
ThresholdDetector convention, fade_bias=0).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import av
import numpy as np
from scenedetect import FrameTimecode
from scenedetect.detectors import ContentDetector

from data_pipeline.borders import BorderFinder
from data_pipeline.config import ShardConfig
from data_pipeline.probe import InputError, Probe

VFR_RATIO = 1.2


@dataclass
class Analysis:
    """Per-frame measurements of one decoded video."""

    times: np.ndarray
    """(N,) presentation time of each decoded frame in seconds, from the first frame."""
    luma: np.ndarray
    """(N,) mean brightness 0-255."""
    motion: np.ndarray
    """(N,) mean absolute grey-level difference to the previous frame, 0-1 (0 for frame 0)."""
    hard_cuts: list[int]
    """Frames where ContentDetector starts a new scene."""
    vfr: bool
    """Variable frame rate: frame intervals vary by more than VFR_RATIO (then clips are resampled
    to a constant rate)."""
    interval_ratio: float
    """Largest over smallest interval between presentation times (sorted)."""
    pts_monotonic: bool
    """Whether decoded frames came out with increasing timestamps (AVI with packed B-frames does
    not; its frames are then timed by index and rate)."""

    @property
    def n(self) -> int:
        return len(self.times)


@dataclass
class ClipPlan:
    scene: int
    """Index of the scene the clip comes from."""
    index: int
    """Index of the clip within its scene."""
    start: int
    """First source frame (inclusive)."""
    end: int
    """Last source frame (exclusive)."""
    src_frames: list[int] = field(default_factory=list)
    """Source frame for each output frame (repeats/skips resample a VFR source to constant rate)."""
    motion: float = 0.0
    luma: float = 0.0


def analyse(
    path: str,
    probe: Probe,
    cfg: ShardConfig,
    deadline: float,
    borders: BorderFinder | None = None,
) -> Analysis:
    """Decodes every frame once at low resolution (and offers each to `borders` at full size);
    raises InputError for truncated/corrupt input."""
    aw = cfg.analysis_width
    ah = max(2, round(aw * probe.height / probe.width / 2) * 2)
    fps = probe.fps if probe.fps > 0 else 25.0
    detector = ContentDetector(threshold=cfg.cut_threshold, min_scene_len=cfg.min_scene_frames)
    times: list[float] = []
    luma: list[float] = []
    motion: list[float] = []
    cuts: list[int] = []
    prev: np.ndarray | None = None
    i = 0
    with av.open(path) as container:
        stream = container.streams.video[0]
        # Single-threaded decoding: Ray already runs one source per core, and FFmpeg's frame
        # threads deadlocked in avcodec_free_context after a mid-stream decode error.
        stream.codec_context.thread_count = 1
        try:
            for frame in container.decode(stream):
                if time.monotonic() > deadline:
                    raise InputError(
                        "analyse",
                        f"timeout: still decoding at frame {i} after {cfg.file_timeout_s:.0f}s",
                    )
                bgr = frame.reformat(width=aw, height=ah, format="bgr24").to_ndarray()
                grey = bgr.mean(axis=2, dtype=np.float32)
                times.append(float(frame.time) if frame.time is not None else i / fps)
                if borders is not None:
                    borders.offer(times[-1] - times[0], frame)
                luma.append(float(grey.mean()))
                motion.append(0.0 if prev is None else float(np.abs(grey - prev).mean() / 255.0))
                prev = grey
                cuts += [
                    int(c.frame_num) for c in detector.process_frame(FrameTimecode(i, fps), bgr)
                ]
                i += 1
        except av.error.FFmpegError as e:
            of = f" of {probe.frames}" if probe.frames else ""
            raise InputError("analyse", f"decode error at frame {i}{of}: {e}") from None
    cuts += [int(c.frame_num) for c in detector.post_process(FrameTimecode(i, fps))]
    if i == 0:
        raise InputError("analyse", "no decodable frames")
    _check_complete(i, times, probe)
    t = np.asarray(times)
    gaps = np.diff(np.sort(t))
    ratio = float(gaps.max() / max(gaps.min(), 1e-9)) if len(gaps) > 1 else 1.0
    monotonic = bool(np.all(np.diff(t) > 0))
    if not monotonic:
        t = np.arange(i) / fps  # the timestamps are not trustworthy; the frame order is
    return Analysis(
        times=t - t[0],
        luma=np.asarray(luma),
        motion=np.asarray(motion),
        hard_cuts=sorted({c for c in cuts if 0 < c < i}),
        vfr=monotonic and ratio > VFR_RATIO,
        interval_ratio=ratio,
        pts_monotonic=monotonic,
    )


def _check_complete(decoded: int, times: list[float], probe: Probe) -> None:
    """A truncated file can open fine, report the full frame count and decode only part of it."""
    if probe.frames > 0:
        expected = probe.frames
        # Headers are sometimes off by a frame or two (edit lists, dropped leading B-frames).
        if decoded < expected - max(2, int(0.02 * expected)):
            raise InputError("analyse", f"truncated: decoded {decoded} of {expected} frames")
    elif probe.duration > 0 and len(times) > 1:
        span = times[-1] - times[0]
        step = span / (len(times) - 1)
        if span + step < probe.duration - max(0.5, 0.05 * probe.duration):
            raise InputError(
                "analyse", f"truncated: decoded {span + step:.2f}s of {probe.duration:.2f}s"
            )


def find_scenes(a: Analysis, cfg: ShardConfig) -> tuple[list[tuple[int, int]], list[int]]:
    """Scenes as [start, end) frame ranges of non-dark frames, and the cut frame of each boundary."""
    dark = a.luma < cfg.dark_threshold
    hard = set(a.hard_cuts)
    scenes: list[tuple[int, int]] = []
    cuts: list[int] = []
    start: int | None = None
    dark_from: int | None = None
    for i in range(a.n):
        if dark[i]:
            if start is not None:
                scenes.append((start, i))
                start = None
            if dark_from is None:
                dark_from = i
            continue
        if start is None:
            if scenes and dark_from is not None:
                cuts.append((dark_from + i) // 2)  # midway between fade-out and fade-in
            start = i
            dark_from = None
        elif i in hard:
            scenes.append((start, i))
            cuts.append(i)
            start = i
    if start is not None:
        scenes.append((start, a.n))
    return scenes, cuts


def plan_clips(a: Analysis, fps: float, cfg: ShardConfig) -> tuple[list[ClipPlan], dict[str, int]]:
    """Splits scenes into clips and applies the duration and motion filters.

    Returns the kept clips and a count of dropped candidates by reason.
    """
    scenes, _ = find_scenes(a, cfg)
    step = 1.0 / fps
    dropped: dict[str, int] = {}
    kept: list[ClipPlan] = []
    for s, (start, end) in enumerate(scenes):
        seconds = a.times[end - 1] - a.times[start] + step
        if seconds < cfg.min_clip_seconds - 1e-6:
            dropped["too_short"] = dropped.get("too_short", 0) + 1
            continue
        parts = max(1, math.ceil(seconds / cfg.max_clip_seconds - 1e-9))
        bounds = np.linspace(a.times[start], a.times[end - 1] + step, parts + 1)
        for k in range(parts):
            src = _resample(a.times, start, end, bounds[k], bounds[k + 1], step) if a.vfr else None
            lo = int(np.searchsorted(a.times[start:end], bounds[k] - 1e-9)) + start
            hi = int(np.searchsorted(a.times[start:end], bounds[k + 1] - 1e-9)) + start
            if hi <= lo:
                continue
            plan = ClipPlan(scene=s, index=k, start=lo, end=hi)
            plan.src_frames = src if src is not None else list(range(lo, hi))
            plan.motion = float(a.motion[lo + 1 : hi].mean()) if hi - lo > 1 else 0.0
            plan.luma = float(a.luma[lo:hi].mean())
            if len(plan.src_frames) / fps < cfg.min_clip_seconds - 1e-6:
                dropped["too_short"] = dropped.get("too_short", 0) + 1
            elif plan.motion < cfg.min_motion:
                dropped["static"] = dropped.get("static", 0) + 1
            else:
                kept.append(plan)
    return kept, dropped


def _resample(
    times: np.ndarray, start: int, end: int, t0: float, t1: float, step: float
) -> list[int]:
    """Constant-rate output frames on the grid t0, t0+step, ... < t1: each takes the latest source
    frame shown at that time (FFmpeg's CFR conversion)."""
    grid = np.arange(t0, t1 - 1e-9, step)
    idx = np.searchsorted(times[start:end], grid + 1e-9, side="right") - 1 + start
    return [int(max(start, min(end - 1, j))) for j in idx]
