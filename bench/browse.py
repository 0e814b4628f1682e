"""`spacetime browse` on a big dataset: a synthetic 100k-clip manifest (no videos), timed from
opening the root to the first page, then a filtered page and a later page.

    python bench/browse.py [--rows 100000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra.browse.serve import server
from infra.storage_config import StorageConfig


def manifest(n: int, root: Path) -> None:
    rng = np.random.default_rng(0)
    words = np.array(["red", "blue", "dog", "street", "sea", "car", "night", "forest"])
    df = pd.DataFrame(
        {
            "key": [f"src{i // 4:07d}-s000-c{i % 4:02d}" for i in range(n)],
            "shard": [f"clips-{i // 1000:06d}.tar" for i in range(n)],
            "frames": rng.integers(24, 240, n),
            "fps": 24.0,
            "height": rng.choice([144, 360, 720, 1080], n),
            "width": rng.choice([256, 640, 1280, 1920], n),
            "seconds": rng.uniform(1, 10, n),
            "source": [f"s3://bucket/videos/{i // 4}.mp4" for i in range(n)],
            "start_s": 0.0,
            "end_s": 5.0,
            "caption": [" ".join(rng.choice(words, 4)) for _ in range(n)],
            "camera": rng.choice(["static", "pan", "tilt", "zoom_in", "zoom_out"], n),
            "flow": rng.uniform(0, 1, n),
            "text": rng.uniform(0, 0.1, n),
            "sharpness": rng.uniform(0, 500, n),
            "dark": rng.uniform(0, 0.1, n),
            "bright": rng.uniform(0, 0.1, n),
            "motion": rng.uniform(0, 0.1, n),
        }
    )
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), root / "manifest.parquet")


def get(url: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as r:
        body = r.read()
    return time.perf_counter() - t0, body.count(b'class="card"')


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-browse-")) / "clips"
    root.mkdir()
    manifest(args.rows, root)
    t0 = time.perf_counter()
    srv = server([str(root)], "127.0.0.1", 0, StorageConfig())
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    while not srv.started:
        time.sleep(0.01)
    opened = time.perf_counter() - t0
    base = f"http://127.0.0.1:{srv.servers[0].sockets[0].getsockname()[1]}/d/0"
    first, n1 = get(base)
    filtered, n2 = get(base + "?q=red+dog&width_min=1280&camera=pan")
    later, n3 = get(base + "?page=2000")
    srv.should_exit = True
    t.join(timeout=10)
    print(f"browse bench: synthetic manifest of {args.rows} clips, one root\n")
    print("| step | s | cards |")
    print("|---|---|---|")
    print(f"| open the root (read manifest.parquet) and start the server | {opened:.2f} | |")
    print(f"| first page | {first:.3f} | {n1} |")
    print(f"| caption text + width + camera filter | {filtered:.3f} | {n2} |")
    print(f"| page 2000 | {later:.3f} | {n3} |")
    total = opened + first
    print(
        f"\nopen to first page: {total:.2f} s (target < 1 s: {'met' if total < 1 else 'not met'})"
    )


if __name__ == "__main__":
    main()
