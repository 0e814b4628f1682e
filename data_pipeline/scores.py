"""Curation scores of one clip, measured on the frames `shard` already decodes for its encode.

Scores are facts about a clip, stored on it; thresholds are decisions made elsewhere (filters in
`shard`, selections in `spacetime curate`). Everything is measured on the output frames (after the
border crop, the resize and the rotation), so a score describes the clip a model will see:

- flow: mean optical-flow magnitude (OpenCV Farneback on the luma, at most 128 px wide), in frame
  widths per second; camera: a similarity model (translation, zoom, rotation) fitted robustly to
  each flow field says static, pan, tilt, zoom_in or zoom_out;
- text: fraction of the frame covered by text boxes from PP-OCRv4's detector (the ONNX model that
  ships inside the `rapidocr_onnxruntime` wheel; no recognition, no download);
- sharpness: variance of the Laplacian of the luma; dark/bright: fractions of clipped pixels;
- phash: a 64-bit DCT perceptual hash of each sampled frame (hex), for near-duplicate search.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from data_pipeline.config import ScoreConfig

FLOW_WIDTH = 128
# Limited-range luma (what yuv420p holds): black is 16 and white 235, a little headroom each way.
DARK_Y, BRIGHT_Y = 20, 231
SCORERS = ("flow", "exposure", "sharpness", "phash", "text")
STATIC_SPEED = 0.02
"""Below this (frame widths per second of camera pan and of zoom) the camera is static."""


def sample_indices(n: int, k: int) -> list[int]:
    """k evenly spaced frame indices of n (the middle of k equal parts)."""
    return sorted({min(n - 1, int((j + 0.5) * n / k)) for j in range(min(k, n))})


def phash(y: np.ndarray) -> int:
    """DCT perceptual hash: the 8x8 lowest frequencies of a 32x32 grey image against their median."""
    small = cv2.resize(y, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:8, :8].ravel()
    bits = low > np.median(low)
    return int("".join("1" if b else "0" for b in bits), 2)


def hamming(a: str, b: str) -> int:
    """Bit distance between two hex hashes of the same length."""
    return (int(a, 16) ^ int(b, 16)).bit_count()


def fit_camera(flow: np.ndarray) -> tuple[float, float, float, float]:
    """(tx, ty, zoom, magnitude) of one flow field, in frame widths per frame: a similarity model
    u = tx + s*x - r*y, v = ty + s*y + r*x (x, y from the centre, in frame widths) fitted by least
    squares, then again on the 60% of points it fits best, so a moving object does not read as a
    camera move."""
    h, w = flow.shape[:2]
    ys, xs = np.mgrid[0:h:2, 0:w:2]
    u = flow[0:h:2, 0:w:2, 0].ravel() / w
    v = flow[0:h:2, 0:w:2, 1].ravel() / w
    x = (xs.ravel() - (w - 1) / 2) / w
    y = (ys.ravel() - (h - 1) / 2) / w
    one, zero = np.ones_like(x), np.zeros_like(x)
    a = np.concatenate(
        [np.stack([one, zero, x, -y], 1), np.stack([zero, one, y, x], 1)]
    )  # unknowns: tx, ty, s, r
    b = np.concatenate([u, v])
    keep = np.ones(len(x), bool)
    for _ in range(2):
        rows = np.concatenate([keep, keep])
        p, *_ = np.linalg.lstsq(a[rows], b[rows], rcond=None)
        res = np.hypot(*(a @ p - b).reshape(2, -1))
        keep = res <= np.quantile(res, 0.6)
    return float(p[0]), float(p[1]), float(p[2]), float(np.hypot(u, v).mean())


@functools.cache
def _text_detector(max_side: int) -> Any:
    # rapidocr's detector only: its wheel carries the PP-OCRv4 detection model and its DB
    # post-processing (box unclipping), which is not worth writing again.
    import rapidocr_onnxruntime
    import yaml
    from rapidocr_onnxruntime.ch_ppocr_det import TextDetector

    root = Path(rapidocr_onnxruntime.__file__).parent
    cfg = dict(yaml.safe_load((root / "config.yaml").read_text())["Det"])
    cfg |= {
        "model_path": str(root / cfg["model_path"]),
        "limit_type": "max",
        "limit_side_len": max_side,
        "intra_op_num_threads": 1,  # Ray runs one source per core
        "inter_op_num_threads": 1,
    }
    return TextDetector(cfg)


def text_area(bgr: np.ndarray, max_side: int) -> float:
    """Fraction of the frame inside detected text boxes that are shaped like lines of text.

    On blurry, busy frames the detector also returns big squarish regions (measured: 40% of a
    frame of a handheld living-room video); a text line is longer than high and its height is a
    fraction of the frame, so boxes thicker than a fifth of the shorter side or less than 1.5x
    longer than thick are left out."""
    boxes, _ = _text_detector(max_side)(bgr)
    if boxes is None or len(boxes) == 0:
        return 0.0
    side = min(bgr.shape[:2])
    lines = []
    for b in boxes:
        thick, long = sorted(cv2.minAreaRect(b.astype(np.float32))[1])
        if thick <= 0.2 * side and long >= 1.5 * thick:
            lines.append(np.round(b).astype(np.int32))
    mask = np.zeros(bgr.shape[:2], np.uint8)
    cv2.fillPoly(mask, lines, 1)
    return float(mask.mean())


class ClipScorer:
    """Fed the output frames of one clip in order (as yuv420p planes), returns its scores."""

    def __init__(self, frames: int, fps: float, cfg: ScoreConfig):
        self.fps, self.cfg = fps, cfg
        self.samples = set(sample_indices(frames, cfg.sample_frames))
        self.text_at = set(sample_indices(frames, cfg.text_frames)) if cfg.text_frames else set()
        self.i = 0
        self.prev: np.ndarray | None = None
        self.moves: list[tuple[float, float, float, float]] = []
        self.dark: list[float] = []
        self.bright: list[float] = []
        self.sharp: list[float] = []
        self.hashes: list[int] = []
        self.text: list[float] = []
        self.cost: dict[str, float] = dict.fromkeys(SCORERS, 0.0)
        """CPU seconds spent per scorer (bench/curation.py reads it)."""

    def add(self, planes: list[np.ndarray]) -> None:
        if not self.cfg.enabled:
            return
        y = planes[0]
        h, w = y.shape
        t0 = time.process_time()
        # Narrower frames are not upscaled: it adds no detail, and Farneback's cost grows with the
        # pixels (the demo's 64 px clips spent 57% of shard's time on flow at 128 px).
        fw = min(FLOW_WIDTH, w)
        small = y if fw == w else cv2.resize(y, (fw, max(8, round(fw * h / w))), cv2.INTER_AREA)
        if self.prev is not None:
            flow = cv2.calcOpticalFlowFarneback(self.prev, small, None, 0.5, 3, 15, 3, 5, 1.2, 0)
            self.moves.append(fit_camera(flow))
        self.prev = small
        t1 = time.process_time()
        sub = y[::2, ::2]
        self.dark.append(float((sub <= DARK_Y).mean()))
        self.bright.append(float((sub >= BRIGHT_Y).mean()))
        t2 = time.process_time()
        if self.i in self.samples:
            self.sharp.append(float(cv2.Laplacian(y, cv2.CV_64F).var()))
            t3 = time.process_time()
            self.hashes.append(phash(y))
            self.cost["sharpness"] += t3 - t2
            self.cost["phash"] += time.process_time() - t3
        t4 = time.process_time()
        if self.i in self.text_at:
            i420 = np.concatenate([y.ravel(), planes[1].ravel(), planes[2].ravel()])
            bgr = cv2.cvtColor(i420.reshape(h * 3 // 2, w), cv2.COLOR_YUV2BGR_I420)
            self.text.append(text_area(bgr, self.cfg.text_max_side))
            self.cost["text"] += time.process_time() - t4
        self.cost["flow"] += t1 - t0
        self.cost["exposure"] += t2 - t1
        self.i += 1

    def result(self) -> dict[str, Any]:
        if not self.cfg.enabled:
            return {}
        m = np.asarray(self.moves) if self.moves else np.zeros((1, 4))
        pan, tilt = np.abs(m[:, 0]).mean() * self.fps, np.abs(m[:, 1]).mean() * self.fps
        zoom = m[:, 2].mean() * self.fps
        return {
            "flow": round(float(m[:, 3].mean() * self.fps), 5),
            "camera": camera_class(pan, tilt, zoom),
            "pan": round(float(pan), 5),
            "tilt": round(float(tilt), 5),
            "zoom": round(float(zoom), 5),
            "text": round(float(np.mean(self.text)), 5) if self.text else None,
            "sharpness": round(float(np.mean(self.sharp)), 3),
            "dark": round(float(np.mean(self.dark)), 5),
            "bright": round(float(np.mean(self.bright)), 5),
            "phash": "".join(f"{h:016x}" for h in self.hashes),
        }


def camera_class(pan: float, tilt: float, zoom: float) -> str:
    """static, pan, tilt, zoom_in or zoom_out from speeds in frame widths per second (zoom: the
    relative scale change per second; a zoom moves the frame's edge by half of it)."""
    edge = abs(zoom) / 2
    if max(pan, tilt, edge) < STATIC_SPEED:
        return "static"
    if edge > max(pan, tilt):
        return "zoom_in" if zoom > 0 else "zoom_out"
    return "pan" if pan >= tilt else "tilt"


def rejection(scores: dict[str, Any], f: Any) -> tuple[str, str] | None:
    """The first filter of `f` (a FilterConfig) that the scores fail, as (rule, reason); None if
    they pass. A score that was not measured (None) fails no filter."""
    checks = [
        ("flow", f.min_flow, lambda v, t: v < t, "<"),
        ("flow", f.max_flow, lambda v, t: v > t, ">"),
        ("text", f.max_text, lambda v, t: v > t, ">"),
        ("sharpness", f.min_sharpness, lambda v, t: v < t, "<"),
        ("dark", f.max_dark, lambda v, t: v > t, ">"),
        ("bright", f.max_bright, lambda v, t: v > t, ">"),
    ]
    for name, limit, fails, op in checks:
        value = scores.get(name)
        if limit is not None and value is not None and fails(value, limit):
            rule = f"{'min' if op == '<' else 'max'}_{name}"
            return rule, f"{name} {value:g} {op} {rule} {limit:g}"
    camera = scores.get("camera")
    if f.cameras and camera is not None and camera not in f.cameras:
        return "cameras", f"camera {camera} not in {','.join(f.cameras)}"
    return None
