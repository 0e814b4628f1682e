"""One source video to staged clips: probe → analyse → plan → encode, failures as records.

`stage_source` never raises for a bad input: it returns a record whose `error` names the stage
and the reason, so one broken file cannot stop a job. It runs in the decoding child process that
`data_pipeline.worker.process_source` hands it to; its output is staged per source (records.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

from data_pipeline.borders import BorderFinder
from data_pipeline.clips import encode_clips
from data_pipeline.config import ShardConfig
from data_pipeline.images import is_image, process_image
from data_pipeline.probe import InputError, Probe, display_size, output_size, probe
from data_pipeline.records import new_record, staged_paths
from data_pipeline.samples import SCHEMA_VERSION, keep_or_reject
from data_pipeline.scenes import analyse, find_scenes, plan_clips
from data_pipeline.sources import Source
from infra.shards import iter_samples, write_samples
from infra.storage import Storage
from infra.uris import is_s3

log = logging.getLogger(__name__)


def stage_source(
    source: Source, cfg: ShardConfig, storage: Storage, staging: str
) -> dict[str, Any]:
    """Probe, analyse and encode one source; stage its clips, then its record (the done-marker)."""
    t0 = time.monotonic()
    record = new_record(source)
    try:
        with _local_copy(source.uri, storage, cfg) as path:
            samples = _process_local(path, source, cfg, record, deadline=t0 + cfg.file_timeout_s)
    except InputError as e:
        record["error"] = {"stage": e.stage, "reason": e.reason}
        samples = []
    except Exception as e:  # a bug or an unexpected library error must not kill the job
        log.exception("%s: unexpected failure", source.uri)
        record["error"] = {"stage": "internal", "reason": f"{type(e).__name__}: {e}"}
        samples = []
    if record["error"] is not None:
        # Never half a source: clips encoded before a failure (a timeout at the second clip) are
        # not staged, so the record must not list them either.
        record["clips"], record["rejected"] = [], []
    if not samples and record["error"] is None:
        reasons = ", ".join(f"{n} {r}" for r, n in sorted(record["dropped"].items())) or "no scenes"
        record["error"] = {"stage": "filter", "reason": f"no clips kept ({reasons})"}
    record["elapsed_s"] = round(time.monotonic() - t0, 3)
    tar_uri, rec_uri = staged_paths(staging, source.source_id)
    if samples:
        write_samples(tar_uri, samples, storage)
    storage.write_text(rec_uri, json.dumps(record, sort_keys=True))  # written last: the done-marker
    return record


@contextlib.contextmanager
def _local_copy(uri: str, storage: Storage, cfg: ShardConfig) -> Iterator[str]:
    """A local path for the source: itself, or a download of an s3:// object to a temp dir."""
    size = (
        storage.size(uri)
        if is_s3(uri)
        else (Path(uri).stat().st_size if Path(uri).is_file() else -1)
    )
    if size < 0:
        raise InputError("read", "file not found")
    if size == 0:
        raise InputError("read", "empty file (0 bytes)")
    if size > cfg.max_input_bytes:
        raise InputError("read", f"too large: {size} bytes > {cfg.max_input_bytes}")
    if not is_s3(uri):
        yield uri
        return
    with tempfile.TemporaryDirectory(prefix="spacetime-src-") as d:
        yield str(storage.download(uri, Path(d) / "video"))


def _process_local(
    path: str, source: Source, cfg: ShardConfig, record: dict[str, Any], deadline: float
) -> list[dict[str, Any]]:
    av.logging.set_level(av.logging.ERROR)
    if is_image(source.rel):
        return process_image(path, source, cfg, record)
    p: Probe = probe(path, cfg.max_input_pixels)
    record["probe"] = p.to_dict()
    record["seconds_in"] = p.duration
    borders = (
        BorderFinder(p.width, p.height, p.duration, cfg.scores.border_luma)
        if cfg.scores.crop_borders
        else None
    )
    a = analyse(path, p, cfg, deadline, borders)
    crop = borders.box() if borders is not None else None
    fps = p.fps
    if a.vfr or fps <= 0:
        # Resample to the average rate of the whole source (its duration includes the last frame's).
        span = (
            p.duration if p.duration > a.times[-1] else float(a.times[-1]) * a.n / max(1, a.n - 1)
        )
        fps = a.n / span if span > 0 else 25.0
    rate = (
        Fraction(p.fps_fraction)
        if not a.vfr and p.fps > 0
        else Fraction(fps).limit_denominator(1001)
    )
    scenes, cuts = find_scenes(a, cfg)
    timing = {
        "vfr": a.vfr,
        "interval_ratio": round(a.interval_ratio, 4),
        "pts_monotonic": a.pts_monotonic,
    }
    record["cuts"], record["scenes"], record["timing"] = cuts, len(scenes), timing
    record["seconds_in"] = float(a.times[-1] + 1.0 / fps)
    plans, dropped = plan_clips(a, float(rate), cfg)
    shown = (p.display_width, p.display_height)
    if crop is not None:
        sar = Fraction(*map(int, p.sar.split(":")))
        shown = display_size(crop[2] - crop[0], crop[3] - crop[1], sar, p.rotation)
    width, height = output_size(*shown, cfg.max_pixels, cfg.size_multiple)
    if plans and min(width, height) < cfg.min_side:
        dropped["too_small"] = dropped.get("too_small", 0) + len(plans)
        plans = []
    record["dropped"] = dropped
    record["crop"] = list(crop) if crop is not None else None
    record["rejected"] = []
    samples = []
    for plan, data, scores in encode_clips(
        path, p, plans, (width, height), rate, cfg, deadline, crop
    ):
        key = f"{source.source_id}-s{plan.scene:03d}-c{plan.index:02d}"
        frames = len(plan.src_frames)
        meta = {
            "schema_version": SCHEMA_VERSION,
            "key": key,
            "source": source.uri,
            "source_rel": source.rel,
            "scene": plan.scene,
            "clip": plan.index,
            "start_frame": plan.start,
            "end_frame": plan.end,
            "start_s": round(float(a.times[plan.start]), 6),
            "end_s": round(float(a.times[plan.end - 1]) + 1.0 / float(rate), 6),
            "fps": float(rate),
            "fps_fraction": f"{rate.numerator}/{rate.denominator}",
            "frames": frames,
            "seconds": round(frames / float(rate), 6),
            "width": width,
            "height": height,
            # motion: mean absolute frame difference (the shard.min_motion filter); the rest:
            # data_pipeline/scores.py
            "scores": {"motion": round(plan.motion, 6), "luma": round(plan.luma, 3), **scores},
            "crop": record["crop"],
            "timing": timing,
            "probe": p.to_dict(),
        }
        sample = keep_or_reject(meta, data, source, cfg, record)
        if sample is not None:
            samples.append(sample)
    return samples


def read_staged_samples(
    storage: Storage, staging: str, source_id: str
) -> dict[str, dict[str, bytes]]:
    """The staged samples of one source, by key: {key: {ext: bytes}}."""
    tar_uri, _ = staged_paths(staging, source_id)
    return {s.pop("__key__"): s for s in iter_samples(tar_uri, storage)}
