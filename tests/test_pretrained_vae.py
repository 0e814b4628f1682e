"""Pretrained video VAEs from a diffusers folder (Wan, HunyuanVideo, CogVideoX, LTX-Video) behind
spacetime's VAE interface: `spacetime encode` on real clip shards equals the diffusers model called
directly with the family's normalisation (computed here from the saved config, independently of
trainer.vae.pretrained); decode inverts it; a DiT trains on the latents and samples through the
same VAE; latents of different VAEs never mix; `spacetime vae reconstruct` scores a real video."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch

from infra.cli import main
from infra.media import decode_frames
from infra.storage import Storage
from tests.pretrained_vaes import FAMILIES, save
from tests.train_runs import REPO, _cmd, _env, _history
from trainer.vae.pixels import to_signed
from trainer.vae.pretrained import VideoVAE, vae_info

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def vaes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pretrained")
    return {f: save(f, root / f) for f in FAMILIES}


@pytest.fixture(scope="module")
def clips(real_shards: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One shard of three real clips cut by `spacetime shard` (their mp4 bytes and manifest rows
    as written), so four families stay cheap to encode."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import webdataset as wds

    src = real_shards["out"]
    out = tmp_path_factory.mktemp("clips")
    keys: list[str] = []
    with wds.TarWriter(str(out / "clips-000000.tar")) as w:
        for shard in sorted(src.glob("clips-*.tar"), key=lambda p: p.stat().st_size):
            for s in wds.WebDataset(str(shard), shardshuffle=False):
                if len(keys) < 3:
                    w.write({k: v for k, v in s.items() if k == "__key__" or k[:2] != "__"})
                    keys.append(s["__key__"])
    rows = [r for r in pq.read_table(src / "manifest.parquet").to_pylist() if r["key"] in keys]
    for r in rows:
        r["shard"] = "clips-000000.tar"
    pq.write_table(pa.Table.from_pylist(rows), out / "manifest.parquet")
    assert len(rows) == 3
    return out


def _direct_encode(family: str, path: Path, x: torch.Tensor) -> torch.Tensor:
    """What a user of diffusers writes: model.encode(x).latent_dist.mode(), then the family's
    normalisation as its pipelines do it, from the saved config (and LTX's buffers)."""
    import diffusers

    conf = json.loads((path / "config.json").read_text())
    cls = getattr(diffusers, conf["_class_name"])
    model = cls.from_pretrained(path, low_cpu_mem_usage=False).eval()
    with torch.no_grad():
        z = model.encode(x).latent_dist.mode()
    if family == "wan":
        mean = torch.tensor(conf["latents_mean"]).view(1, -1, 1, 1, 1)
        std = torch.tensor(conf["latents_std"]).view(1, -1, 1, 1, 1)
        return (z - mean) / std
    if family == "ltx":
        mean, std = model.latents_mean.view(1, -1, 1, 1, 1), model.latents_std.view(1, -1, 1, 1, 1)
        return (z - mean) * conf["scaling_factor"] / std
    return z * conf["scaling_factor"]  # HunyuanVideo, CogVideoX


def test_config_strides_are_the_models(vaes: dict[str, Path]) -> None:
    """Strides and channels read from each config (no weights) equal what the model does to a
    clip, and the frame rule 1 + stride*k holds."""
    for family, path in vaes.items():
        info = vae_info(path)
        vae = VideoVAE(path)
        frames = info.frames_for(3)
        x = torch.rand(1, 3, frames, 2 * info.space_stride, 3 * info.space_stride) * 2 - 1
        z = vae.encode(x)
        assert tuple(z.shape) == (1, info.latent_channels, 3, 2, 3), (family, z.shape)
        assert vae.decode(z).shape == x.shape, family
    assert vae_info(vaes["ltx"]).space_stride == 32 and vae_info(vaes["ltx"]).time_stride == 8
    assert vae_info(vaes["wan"]).latent_channels == 16


@pytest.mark.parametrize("family", FAMILIES)
def test_encode_equals_the_diffusers_model_and_decode_inverts_it(
    family: str, vaes: dict[str, Path], clips: Path, tmp_path: Path, local_ray: None
) -> None:
    from trainer.encode import read_latents
    from trainer.vae.pretrained import crop_to_stride

    out = tmp_path / "latents"
    argv = ["encode", "--shards", str(clips), "--vae", str(vaes[family]), "--output", str(out)]
    assert main([*argv, "--set", "encode.max_frames=9"]) == 0
    info, vae = vae_info(vaes[family]), VideoVAE(vaes[family])
    torch.set_num_threads(1)  # as the encode workers: the same reduction order, bit for bit
    n = 0
    import webdataset as wds

    for shard in sorted(clips.glob("clips-*.tar")):
        got = read_latents(str(out / shard.name.replace("clips-", "latents-")), Storage())
        for s in wds.WebDataset(str(shard), shardshuffle=False):
            frames = decode_frames(s["mp4"], max_frames=9)
            t = 1 + info.time_stride * ((len(frames) - 1) // info.time_stride)
            x = to_signed(frames[:t])[None]
            x = crop_to_stride(x, info.space_stride)
            want = _direct_encode(family, vaes[family], x)[0]
            item = got[s["__key__"]]
            assert torch.equal(item["latent"], want), (family, s["__key__"])
            assert item["meta"]["vae"] == vae.tag
            n += 1
            if n == 1:  # decode inverts the normalisation: the family's decoder on the raw z
                import diffusers

                cls = getattr(diffusers, vae.info.family)
                model = cls.from_pretrained(vaes[family], low_cpu_mem_usage=False).eval()
                raw = vae.denormalize(want[None])
                assert torch.allclose(vae.normalize(raw), want[None], atol=1e-5)
                with torch.no_grad():
                    assert torch.equal(vae.decode(want[None]), model.decode(raw).sample)
    assert n == 3
    index = json.loads(next(out.glob("*.index.json")).read_text())
    assert index["vae"]["class"] == info.family and index["vae"]["tag"] == vae.tag


# Relative RMS error of tiled vs whole-clip latents measured on this test's real clip (256x144,
# 128-px tiles) with the tiny random-weight models: Wan 0.10, HunyuanVideo 0.24, CogVideoX 0.40,
# LTX-Video 0.56. Random tiny models normalise over few channels and (all but Wan) attend over the
# whole frame in their mid block, so a tile sees other statistics than the frame; trained VAEs
# are built to be tiled. The bound is the measurement plus half.
TILED_RMS = {"wan": 0.15, "hunyuan": 0.36, "cogvideox": 0.6, "ltx": 0.84}


def test_tiled_encode_within_tolerance_of_whole(vaes: dict[str, Path], videos_dir: Path) -> None:
    """The family's own tiling is used (smaller tiles stray further), stays within the stated
    tolerance of the whole-clip latents, and a tile as large as the frame changes nothing."""
    from trainer.vae.reconstruct import load_video

    video = str(sorted(videos_dir.glob("*.mp4"))[0])
    for family, path in vaes.items():
        vae = VideoVAE(path)
        x = load_video(video, vae, 9, 256)
        whole = vae.encode(x)

        def err(tile: int) -> float:
            d = vae.encode(x, tile=tile) - whole  # noqa: B023
            return float(d.pow(2).mean().sqrt() / whole.pow(2).mean().sqrt())  # noqa: B023

        big, small = err(128), err(64)
        assert 0 < big < small and big < TILED_RMS[family], (family, big, small)
        assert torch.equal(vae.encode(x, tile=256), whole), family


FRAMES = ("--set", "train.data.max_frames=9", "--set", "train.data.workers=0")


def _train(
    data: Path, out: Path, name: str, *more: str, source: tuple[str, ...] = ("--latents",)
) -> subprocess.CompletedProcess[str]:
    """The DeepSpeed tests' training command on one rank, 2 steps of one 512-token micro-batch;
    `source`: the flag(s) that take `data` in place of --latents (e.g. --clips DIR --vae VAE)."""
    cmd = _cmd(1, data, out, name, 2, "--set", "train.steps=2")
    at = cmd.index("--latents")
    cmd[at : at + 2] = [source[0], str(data), *source[1:]]
    cmd += ["--set", "train.data.token_budget=512", "--set", "train.data.microbatches_per_step=1"]
    cmd += [*FRAMES, *more]
    return subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)


def test_dit_trains_on_pretrained_latents_samples_through_the_vae_and_never_mixes(
    vaes: dict[str, Path],
    clips: Path,
    tmp_path: Path,
    local_ray: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Per family: encode, train 2 steps (the DiT's input channels follow the VAE: 16 for the
    Wan-like one), sample through the same VAE; for Wan also train --clips (encoded on the fly),
    which equals the cached latents' losses. Then every way to mix VAEs is refused, naming
    both: sampling with another VAE, latents of two VAEs in one folder, a preview VAE other than
    the data's."""
    lat = {}
    for family, path in vaes.items():
        lat[family] = tmp_path / f"lat-{family}"
        enc = ["encode", "--shards", str(clips), "--vae", str(path), "--output", str(lat[family])]
        assert main([*enc, "--set", "encode.max_frames=9"]) == 0
        p = _train(lat[family], tmp_path, family)
        assert p.returncode == 0, p.stderr[-3000:]
        ck = tmp_path / family / "checkpoints"
        state = json.loads((ck / (ck / "latest").read_text() / "trainer_state.json").read_text())
        model = state["config"]["model"]
        assert model["in_channels"] == vae_info(path).latent_channels
        assert model["latent_space"] == VideoVAE(path).tag
        info = vae_info(path)
        out = tmp_path / f"sample-{family}"
        argv = ["sample", "--checkpoint", str(tmp_path / family), "--vae", str(path)]
        argv += ["--prompt", "a red circle", "--output", str(out), "--steps", "2"]
        side = 2 * max(16, info.space_stride)
        argv += ["--frames", str(info.frames_for(2)), "--height", str(side), "--width", str(side)]
        assert main(argv) == 0
        assert (out / "00-a-red-circle.mp4").is_file()
    # Encoded on the fly (train --clips --vae WAN) it trains the cached latents' losses.
    p = _train(clips, tmp_path, "fly", source=("--clips", "--vae", str(vaes["wan"])))
    assert p.returncode == 0, p.stderr[-3000:]
    got, want = _history(tmp_path, "fly"), _history(tmp_path, "wan")
    assert len(got) == 2 and got == pytest.approx(want, rel=1e-5)
    # Sampling with another VAE than the one the latents were made with.
    wrong = ["sample", "--checkpoint", str(tmp_path / "hunyuan"), "--vae", str(vaes["cogvideox"])]
    wrong += ["--prompt", "x", "--output", str(tmp_path / "no")]
    wrong += ["--steps", "1", "--frames", "5", "--height", "16", "--width", "16"]
    caplog.clear()
    assert main(wrong) != 0
    pattern = r"learned latents of vae-\w+; --vae .* is vae-\w+ \(AutoencoderKLCogVideoX\)"
    assert re.search(pattern, caplog.text), caplog.text
    # Latent shards of two VAEs in one folder.
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for family, new in (("hunyuan", "latents-900000"), ("cogvideox", "latents-900001")):
        first = sorted(lat[family].glob("latents-*.tar"))[0]
        shutil.copy(first, mixed / f"{new}.tar")
        shutil.copy(first.with_suffix("").with_suffix(".index.json"), mixed / f"{new}.index.json")
    p = _train(mixed, tmp_path, "mixed")
    assert p.returncode != 0 and "latents of different VAEs never mix" in p.stderr, p.stderr[-2000:]
    tags = [VideoVAE(vaes[f]).tag for f in ("hunyuan", "cogvideox")]
    assert all(t in p.stderr for t in tags), p.stderr[-2000:]
    # A preview VAE other than the one that made the latents.
    more = ["--set", "train.preview.every=2", "--set", f"train.preview.vae={vaes['cogvideox']}"]
    p = _train(lat["hunyuan"], tmp_path, "preview", "--set", "train.checkpoint_every=2", *more)
    assert p.returncode != 0 and "previews would decode them with the wrong VAE" in p.stderr


def test_vae_reconstruct_writes_side_by_side_and_true_scores(
    vaes: dict[str, Path], videos_dir: Path, tmp_path: Path
) -> None:
    from trainer.vae.heldout import psnr
    from trainer.vae.reconstruct import load_video, ssim

    video = str(sorted(videos_dir.glob("*.mp4"))[0])
    out = tmp_path / "recon"
    argv = ["vae", "reconstruct", "--vae", str(vaes["wan"]), "--input", video]
    assert main([*argv, "--output", str(out), "--max-frames", "9", "--max-side", "96"]) == 0
    result = json.loads((out / "reconstruction.json").read_text())
    vae = VideoVAE(vaes["wan"])
    x = load_video(video, vae, 9, 96)
    y = vae.decode(vae.encode(x)).clamp(-1, 1)
    assert result["psnr_db"] == pytest.approx(psnr(y[0], x[0]), abs=1e-6)
    assert result["ssim"] == pytest.approx(ssim(y[0], x[0]), abs=1e-6)
    assert ssim(x[0], x[0]) == pytest.approx(1.0, abs=1e-6) and result["ssim"] < 0.99
    side = decode_frames((out / "side_by_side.mp4").read_bytes())
    assert side.shape[0] == x.shape[2] and side.shape[1:3] == (x.shape[3], 2 * x.shape[4])
    left = torch.from_numpy(side[..., : x.shape[4], :]).float()
    want = ((x[0] + 1) * 127.5).permute(1, 2, 3, 0)
    assert (left - want).abs().mean() < 8  # the input, through H.264 at CRF 12
