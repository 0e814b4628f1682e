"""`spacetime browse`: real HTTP against the uvicorn server, and a real headless Chromium (Debian's
`chromium`, driven by Playwright) on shards made from ../shared/data/videos."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from infra.browse.serve import is_loopback, server
from infra.browse.tarindex import member_index
from infra.storage import Storage
from infra.storage_config import StorageConfig

CHROMIUM = "/usr/bin/chromium"  # Debian's package, installed by .ci/run
CAPTIONS = {
    "bikes.mp4": "a red bike race on a dirt track",
    "flower.mp4": "a pink flower moving in the wind",
    "carphone_pristine.mp4": "a man talking in a car",
}


@pytest.fixture(scope="module")
def roots(
    videos_dir: Path, tmp_path_factory: pytest.TempPathFactory, local_ray: None
) -> dict[str, Path]:
    from data_pipeline.config import ShardConfig
    from data_pipeline.job import run_shard
    from recaption.config import RecaptionConfig
    from recaption.job import run_recaption

    d = tmp_path_factory.mktemp("browse")
    manifest = d / "videos.jsonl"
    manifest.write_text(
        "".join(
            json.dumps({"path": str(videos_dir / n), "caption": c}) + "\n"
            for n, c in CAPTIONS.items()
        )
    )
    clips = d / "clips"
    run_shard(str(manifest), str(clips), ShardConfig(max_pixels=256 * 144), StorageConfig())
    caps = d / "captions-stats"
    run_recaption(str(clips), str(caps), RecaptionConfig(backend="stats"), StorageConfig())
    return {"clips": clips, "captions": caps, "run": _run_folder(d / "run", clips)}


def _run_folder(run: Path, clips: Path) -> Path:
    """A run folder as `spacetime train` leaves it: TensorBoard scalars, checkpoints, a preview."""
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(run / "tensorboard"))
    for step in range(1, 21):
        w.add_scalar("train/loss", 1.0 / step, step)
        w.add_scalar("train/lr", 1e-4 * min(1, step / 5), step)
    w.close()
    for step in (10, 20):
        (run / "checkpoints" / f"step-{step}").mkdir(parents=True)
    (run / "checkpoints" / "latest").write_text("step-20")
    prev = run / "previews" / "step-20"
    prev.mkdir(parents=True)
    tar = next(clips.glob("clips-*.tar"))
    with tarfile.open(tar) as t:
        mp4 = next(m for m in t.getmembers() if m.name.endswith(".mp4"))
        (prev / "000.mp4").write_bytes(t.extractfile(mp4).read())  # type: ignore[union-attr]
    (prev / "000.json").write_text(json.dumps({"prompt": "a red circle moving left"}))
    Image.fromarray(np.zeros((32, 64, 3), np.uint8)).save(prev / "contact_sheet.png")
    secret = run.parent / "outside.mp4"
    secret.write_bytes(b"not yours")
    (run / "previews" / "escape.mp4").symlink_to(secret)
    return run


@pytest.fixture(scope="module")
def url(roots: dict[str, Path]) -> Iterator[str]:
    paths = [str(roots[k]) for k in ("clips", "captions", "run")]
    yield from _serve(paths, StorageConfig())


def _serve(paths: list[str], storage: StorageConfig) -> Iterator[str]:
    srv = server(paths, "127.0.0.1", 0, storage)
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline and t.is_alive(), "browse server did not start"
        time.sleep(0.05)
    port = srv.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        t.join(timeout=10)


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def _members(clips: Path) -> dict[str, bytes]:
    out = {}
    for tar in sorted(clips.glob("clips-*.tar")):
        with tarfile.open(tar) as t:
            for m in t.getmembers():
                if m.name.endswith(".mp4"):
                    out[m.name[: -len(".mp4")]] = t.extractfile(m).read()  # type: ignore[union-attr]
    return out


def test_range_requests_return_exactly_the_tar_members_bytes(
    url: str, roots: dict[str, Path]
) -> None:
    members = _members(roots["clips"])
    assert len(members) >= 5
    for key, data in list(members.items())[:3]:
        status, headers, body = _get(f"{url}/m/0/{key}.mp4")
        assert status == 200 and body == data and headers["accept-ranges"] == "bytes"
        status, headers, body = _get(f"{url}/m/0/{key}.mp4", {"Range": "bytes=100-1099"})
        assert status == 206 and body == data[100:1100]
        assert headers["content-range"] == f"bytes 100-1099/{len(data)}"
        status, _, body = _get(f"{url}/m/0/{key}.mp4", {"Range": "bytes=-64"})
        assert status == 206 and body == data[-64:]
        status, _, _ = _get(f"{url}/m/0/{key}.mp4", {"Range": f"bytes={len(data)}-"})
        assert status == 416


def test_nothing_outside_the_roots_is_served(url: str, roots: dict[str, Path]) -> None:
    status, _, body = _get(f"{url}/r/2/file/previews/step-20/000.mp4")
    assert status == 200 and body[4:8] == b"ftyp"
    for path in (
        "/r/2/file/previews/escape.mp4",  # a symlink out of the run folder
        "/r/2/file/..%2F..%2Foutside.mp4",
        "/r/2/file/%2Fetc%2Fpasswd",
        "/r/2/file/previews/../../outside.mp4",
        "/r/2/file/previews/step-20/000.json",  # not a media file
        "/m/0/..%2F..%2Fetc%2Fpasswd.mp4",
        "/m/0/no-such-clip.mp4",
        "/m/1/anything.mp4",  # root 1 is a caption set
        "/d/9",
    ):
        status, _, body = _get(url + path)
        assert 400 <= status < 500, (path, status)
        assert b"not yours" not in body and b"root:" not in body
    for method in ("POST", "PUT", "DELETE"):
        req = urllib.request.Request(f"{url}/d/0", method=method, data=b"x")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == 405


def test_tar_members_with_unsafe_names_are_never_indexed(tmp_path: Path) -> None:
    tar = tmp_path / "clips-000000.tar"
    with tarfile.open(tar, "w") as t:
        for name in ("good.mp4", "../evil.mp4", "/abs.mp4", "a/../../b.mp4"):
            info = tarfile.TarInfo(name)
            info.size = 4
            t.addfile(info, io.BytesIO(b"data"))
    assert set(member_index(str(tar), Storage())) == {"good.mp4"}


def test_dataset_pages_filter_and_show_captions_rejections_and_runs(
    url: str, roots: dict[str, Path]
) -> None:
    manifest = pq.read_table(roots["clips"] / "manifest.parquet").to_pandas()
    _, _, page = _get(f"{url}/d/0?per_page=100")
    assert page.count(b'class="card"') == len(manifest)
    red = manifest[manifest["caption"].str.contains("red")]
    _, _, page = _get(f"{url}/d/0?per_page=100&q=red")
    assert page.count(b'class="card"') == len(red) > 0
    _, _, page = _get(f"{url}/d/0?per_page=100&width_min=10000")
    assert page.count(b'class="card"') == 0
    assert _get(f"{url}/d/0?seconds_min=abc")[0] == 400
    key = manifest["key"][0]
    status, _, page = _get(f"{url}/d/0/clip/{key}")
    assert status == 200 and key.encode() in page and b"captions-stats" in page
    status, _, page = _get(f"{url}/r/2")
    assert status == 200 and b'data-name="loss"' in page and b"step-20 (latest)" in page
    assert b"a red circle moving left" in page


def test_s3_roots_are_served_by_range(
    roots: dict[str, Path], s3_server: str, s3_bucket: str
) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    for f in roots["clips"].iterdir():
        if f.is_file():
            s3.upload_file(str(f), s3_bucket, f"data/clips/{f.name}")
    members = _members(roots["clips"])
    key, data = next(iter(members.items()))
    for base in _serve([f"s3://{s3_bucket}/data/clips"], StorageConfig(s3_endpoint_url=s3_server)):
        status, _, body = _get(f"{base}/m/0/{key}.mp4", {"Range": "bytes=8-4095"})
        assert status == 206 and body == data[8:4096]
        assert _get(f"{base}/d/0")[2].count(b'class="card"') == min(24, len(members))


def test_a_real_browser_plays_clips_filters_and_draws_the_loss_curve(
    url: str, roots: dict[str, Path], tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    shots = tmp_path / "screenshots"
    shots.mkdir()
    manifest = pq.read_table(roots["clips"] / "manifest.parquet").to_pandas()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{url}/d/0?per_page=100")
            assert page.locator(".card").count() == len(manifest)
            # Played from the tar through Range requests: it has frames to show (readyState >= 2)
            # and its clock moves. Polled, not sampled once: a looping 1.2 s clip could be caught
            # seeking back to its start.
            state = page.evaluate(
                """async () => {
                  const v = document.querySelector('.card video');
                  v.muted = true;
                  v.loop = false;
                  await v.play();
                  const t0 = v.currentTime;
                  for (let i = 0; i < 50; i++) {
                    await new Promise(r => setTimeout(r, 100));
                    if (v.readyState >= 2 && v.currentTime > t0 + 0.2) break;
                  }
                  return {ready: v.readyState, t0, t1: v.currentTime, error: v.error && v.error.code};
                }"""
            )
            assert state["ready"] >= 2 and state["t1"] > state["t0"] + 0.2, state
            assert state["error"] is None, state
            page.screenshot(path=str(shots / "dataset.png"), full_page=True)
            page.fill("#q", "flower")
            page.click("#apply")
            page.wait_for_load_state()
            flower = manifest[manifest["caption"].str.contains("flower")]
            keys = page.locator(".card").evaluate_all("cards => cards.map(c => c.dataset.key)")
            assert sorted(keys) == sorted(flower["key"]) and keys
            page.screenshot(path=str(shots / "filtered.png"), full_page=True)
            page.goto(f"{url}/r/2")
            points = page.locator('figure[data-name="loss"] polyline').get_attribute("points")
            assert points is not None and len(points.split()) == 20
            page.screenshot(path=str(shots / "run.png"), full_page=True)
        finally:
            browser.close()
    for name in ("dataset.png", "filtered.png", "run.png"):
        assert (shots / name).stat().st_size > 5000
    keep = Path(__file__).resolve().parents[1] / ".cache" / "test-artefacts" / "browse"
    shutil.copytree(shots, keep, dirs_exist_ok=True)  # left for a person to look at


def test_loopback_is_told_from_other_addresses() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
