"""A training run folder as the run page shows it: curves from its TensorBoard events, its
checkpoints, its sample previews per checkpoint, and the demo's evaluation when there is one."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

CURVES = {
    "train/loss": "loss",
    "train/lr": "learning rate",
    "train/grad_norm": "gradient norm",
    "train/tokens_per_s": "tokens/s",
    "val/loss": "validation loss",
}


def curves(run: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} of the scalars in CURVES, from every event file of the run (a
    resumed run appends files; the last value written for a step wins)."""
    tb = run / "tensorboard"
    if not tb.is_dir():
        return {}
    # TensorBoard's own reader: the event format is TFRecord-framed protobuf, not ours to parse.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, dict[int, float]] = {}
    for events in sorted(tb.rglob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in set(acc.Tags().get("scalars", [])) & set(CURVES):
            for ev in acc.Scalars(tag):
                out.setdefault(tag, {})[ev.step] = ev.value
    return {tag: sorted(points.items()) for tag, points in out.items()}


def svg_path(
    points: list[tuple[int, float]], width: int = 480, height: int = 160
) -> dict[str, Any]:
    """A polyline scaled into a width x height box, with the axis ranges for labels."""
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    sx = (width - 2) / max(1, x1 - x0)
    sy = (height - 2) / (y1 - y0) if y1 > y0 else 0.0
    coords = " ".join(
        f"{1 + (x - x0) * sx:.1f},{height - 1 - (y - y0) * sy:.1f}" for x, y in points
    )
    return {"points": coords, "x0": x0, "x1": x1, "y0": y0, "y1": y1, "n": len(points)}


def _step(name: str) -> int:
    m = re.fullmatch(r"step-(\d+)", name)
    return int(m.group(1)) if m else -1


def checkpoints(run: Path) -> list[dict[str, Any]]:
    d = run / "checkpoints"
    if not d.is_dir():
        return []
    latest = (d / "latest").read_text().strip() if (d / "latest").is_file() else ""
    return [
        {"name": p.name, "step": _step(p.name), "latest": p.name == latest}
        for p in sorted(d.iterdir(), key=lambda p: _step(p.name))
        if p.is_dir() and _step(p.name) >= 0
    ]


def previews(run: Path) -> list[dict[str, Any]]:
    """Per checkpoint step: its sample videos with their prompts, and the contact sheet."""
    d = run / "previews"
    if not d.is_dir():
        return []
    out = []
    for step_dir in sorted(d.iterdir(), key=lambda p: _step(p.name)):
        if not step_dir.is_dir():
            continue
        samples = []
        for meta in sorted(step_dir.glob("*.json")):
            rec = json.loads(meta.read_text())
            video = meta.with_suffix(".mp4")
            if video.is_file():
                rel = video.relative_to(run).as_posix()
                samples.append({"prompt": rec.get("prompt", ""), "video": rel})
        sheet = step_dir / "contact_sheet.png"
        out.append(
            {
                "step": _step(step_dir.name),
                "samples": samples,
                "sheet": sheet.relative_to(run).as_posix() if sheet.is_file() else None,
            }
        )
    return out


def evaluation(run: Path) -> dict[str, Any] | None:
    """The demo's evaluation (eval.json beside or above the run), when there is one."""
    for d in (run, run.parent):
        for name in ("eval.json", "summary.json"):
            f = d / name
            if f.is_file():
                data = json.loads(f.read_text())
                ev = data.get("eval", data) if isinstance(data, dict) else None
                if isinstance(ev, dict) and "colour" in ev:
                    return ev
    return None
