"""Frame sampling for captioning: N frames spread over a clip, reached by seeking, not by decoding
every frame (long clips decode only from the keyframe before each target)."""

from __future__ import annotations

import io

import av
import numpy as np


def sample_frames(
    mp4: bytes, n: int, max_side: int = 384
) -> tuple[np.ndarray, list[float], dict[str, float]]:
    """(frames (k, H, W, 3) uint8 with k <= n, their times in s, {"fps", "seconds", "width",
    "height"}) of a clip, resized so the longer side is at most `max_side` (aspect kept)."""
    with av.open(io.BytesIO(mp4)) as c:
        s = c.streams.video[0]
        s.thread_type = "NONE"  # see PLATFORM.md: frame threads deadlocked after decode errors
        tb = float(s.time_base)
        fps = float(s.average_rate or 0) or 25.0
        seconds = float(s.duration * s.time_base) if s.duration else (s.frames or 1) / fps
        targets = [seconds * (i + 0.5) / n for i in range(n)] if n > 1 else [seconds / 2]
        start = float(s.start_time * tb) if s.start_time is not None else 0.0
        frames: list[np.ndarray] = []
        times: list[float] = []
        for target in targets:
            c.seek(int((start + target) / tb), stream=s, backward=True, any_frame=False)
            chosen = None
            for frame in c.decode(s):
                if frame.pts is None:
                    continue
                t = frame.pts * tb - start
                chosen = frame
                if t + 0.5 / fps >= target:
                    break
            if chosen is None:
                continue
            times.append(round(float(chosen.pts * tb - start), 4))
            w, h = chosen.width, chosen.height
            scale = min(1.0, max_side / max(w, h))
            if scale < 1.0:
                chosen = chosen.reformat(
                    width=max(2, round(w * scale / 2) * 2), height=max(2, round(h * scale / 2) * 2)
                )
            frames.append(chosen.to_ndarray(format="rgb24"))
        width, height = s.codec_context.width, s.codec_context.height
    if not frames:
        raise ValueError("no frame could be decoded")
    return (
        np.stack(frames),
        times,
        {"fps": fps, "seconds": seconds, "width": width, "height": height},
    )
