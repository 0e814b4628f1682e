"""Still images as 1-frame clips: a folder of images made from frames of ../shared/data/videos
(jpg, png, webp, one with an EXIF rotation) and two videos go shard -> encode -> train."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageOps

from infra.media import decode_frames
from infra.shards import iter_samples
from infra.storage import Storage
from tests import curation_media as cm

REPO = Path(__file__).resolve().parents[1]


def _cli(*args: str, timeout: float = 600) -> str:
    p = subprocess.run(
        [sys.executable, "-m", "infra.cli", *args],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert p.returncode == 0, f"{args[0]} failed:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}"
    return p.stdout + p.stderr


@pytest.fixture(scope="module")
def images_and_videos(videos_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("images") / "in"
    d.mkdir()
    bikes = cm.still(videos_dir, "bikes.mp4", 12)  # 640x272
    flower = cm.still(videos_dir, "flower.mp4", 5)  # 960x540
    Image.fromarray(bikes).save(d / "bikes.jpg", quality=92)
    Image.fromarray(flower).save(d / "flower.png")
    Image.fromarray(cm.still(videos_dir, "carphone_pristine.mp4", 3)).save(d / "car.webp")
    # Stored landscape, shown portrait: EXIF orientation 6 turns it 90 degrees clockwise.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(flower[:, 120:840]).save(d / "portrait.jpg", exif=exif, quality=92)
    cm.write(d / "pan.mp4", cm.pan(flower, 2, 0))
    cm.write(d / "tilt.mp4", cm.pan(bikes, 0, 2))
    return d


def test_images_go_shard_encode_train_and_portrait_stays_portrait(
    images_and_videos: Path, tmp_path: Path
) -> None:
    src = images_and_videos
    shards = tmp_path / "clips"
    _cli("shard", "--input", str(src), "--output", str(shards), "--set", "shard.max_pixels=65536")
    m = pq.read_table(shards / "manifest.parquet").to_pandas()
    m["name"] = m["source"].str.rsplit("/", n=1).str[-1]
    images = m[m["frames"] == 1].set_index("name")
    assert sorted(images.index) == ["bikes.jpg", "car.webp", "flower.png", "portrait.jpg"]
    assert len(m[m["frames"] > 1]) >= 2  # the videos are clips as before
    # native aspect ratio under the pixel budget, sides multiples of 16
    assert abs(images.at["bikes.jpg", "width"] / images.at["bikes.jpg", "height"] - 640 / 272) < 0.1
    p = images.loc["portrait.jpg"]
    assert p["height"] > p["width"], "an EXIF-rotated photo must stay portrait"
    # ...and its pixels are the turned picture, not the stored one squeezed
    samples = {
        s["__key__"]: s
        for t in sorted(shards.glob("clips-*.tar"))
        for s in iter_samples(str(t), Storage())
    }
    frame = decode_frames(samples[p["key"]]["mp4"])[0].astype(float)
    stored = Image.open(src / "portrait.jpg")
    turned = np.asarray(ImageOps.exif_transpose(stored).convert("RGB").resize(frame.shape[1::-1]))
    squeezed = np.asarray(stored.convert("RGB").resize(frame.shape[1::-1]))
    assert np.abs(frame - turned).mean() < 0.4 * np.abs(frame - squeezed).mean()
    meta = json.loads(samples[p["key"]]["json"])
    assert meta["kind"] == "image" and meta["probe"]["profile"] == "exif orientation 6"

    from trainer.data.plan import load_index
    from trainer.vae.config import VAEConfig
    from trainer.vae.model import CausalVAE

    vae, lat = tmp_path / "vae", tmp_path / "latents"
    CausalVAE(VAEConfig.named("tiny")).save_pretrained(vae)
    _cli("encode", "--shards", str(shards), "--vae", str(vae), "--output", str(lat))
    shapes = {e.key: e.shape for e in load_index(str(lat), Storage()).entries}
    for key in images["key"]:
        assert shapes[key][1] == 1, "an image is one latent frame"
    assert all(shapes[k][1] > 1 for k in m.loc[m["frames"] > 1, "key"])
    out = _cli(
        "train", "--preset", "tiny", "--latents", str(lat),
        "--set", f"run.output_dir={tmp_path / 'runs'}", "--set", "train.steps=4",
        "--set", "train.zero_stage=0", "--set", "train.data.token_budget=512",
        "--set", "train.checkpoint_every=4", "--set", "train.log_every=2",
    )  # fmt: skip
    assert "step 4/4" in out
