"""Sampling modes on a tiny model: shapes, determinism, conditioning frames kept exactly; the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from infra.cli import main
from infra.config import to_dict
from infra.media import write_mp4
from trainer.config import TrainConfig
from trainer.model.dit import DiT
from trainer.sample import conditioning, generate, latent_grid
from trainer.sample_config import SampleConfig
from trainer.vae.config import VAEConfig
from trainer.vae.model import CausalVAE
from trainer.vae.pretrained import VideoVAE


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> dict:  # type: ignore[type-arg]
    root = tmp_path_factory.mktemp("sample")
    torch.manual_seed(0)
    CausalVAE(VAEConfig.named("tiny")).save_pretrained(root / "vae")
    vae = VideoVAE(root / "vae")
    rng = np.random.default_rng(0)
    clip = (rng.random((13, 32, 48, 3)) * 255).astype(np.uint8)
    write_mp4(root / "a.mp4", clip)
    write_mp4(root / "b.mp4", clip[::-1].copy())
    return {"root": root, "vae": vae}


def _model(objective: str) -> tuple[DiT, TrainConfig]:
    cfg = TrainConfig(objective=objective)  # type: ignore[arg-type]
    cfg.model.in_channels = 4
    torch.manual_seed(1)
    model = DiT(cfg.model).eval()
    # DiT starts as the zero function (adaLN-Zero); perturb so samples depend on the weights.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model, cfg


@pytest.mark.parametrize("objective", ["flow", "ddpm"])
@pytest.mark.parametrize("mode", ["t2v", "i2v", "extend", "extend_backward", "interpolate", "edit"])
def test_modes_keep_given_frames(parts: dict, objective: str, mode: str) -> None:  # type: ignore[type-arg]
    model, tcfg = _model(objective)
    scfg = SampleConfig(
        mode=mode, frames=13, height=32, width=48, steps=4, guidance=2.0, cond_latent_frames=1
    )  # type: ignore[arg-type]
    texts = [torch.randn(5, 384), torch.randn(3, 384)]
    inputs = [str(parts["root"] / "a.mp4"), str(parts["root"] / "b.mp4")]
    lat, vids = generate(model, tcfg, scfg, texts, parts["vae"], inputs)
    shape = latent_grid(scfg, model.cfg, parts["vae"])
    assert [tuple(z.shape) for z in lat] == [shape] * 2
    assert [tuple(v.shape) for v in vids] == [(3, 13, 32, 48)] * 2
    given = conditioning(mode, shape, scfg, parts["vae"], inputs)
    if given is not None:
        x0, mask = given
        assert mask.any() and not mask.all()
        for z in lat:
            assert torch.equal(z[:, mask], x0[:, mask])  # exactly the given latent frames
            assert not torch.allclose(z[:, ~mask], x0[:, ~mask])
    again, _ = generate(model, tcfg, scfg, texts, parts["vae"], inputs)
    assert all(torch.equal(a, b) for a, b in zip(lat, again, strict=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("objective", ["flow", "ddpm"])
@pytest.mark.parametrize("mode", ["t2v", "i2v", "edit"])
def test_denoises_on_the_gpu_as_on_the_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, objective: str, mode: str
) -> None:
    torch.manual_seed(0)
    CausalVAE(VAEConfig.named("tiny")).save_pretrained(tmp_path / "vae")
    vae = VideoVAE(tmp_path / "vae")
    given = torch.rand(3, 13, 32, 48) * 2 - 1  # the input video, without a media stack
    monkeypatch.setattr("trainer.sample.read_media", lambda _p, n, _h, _w: given[:, :n])
    model, tcfg = _model(objective)
    scfg = SampleConfig(
        mode=mode, frames=13, height=32, width=48, steps=4, guidance=2.0, cond_latent_frames=1
    )  # type: ignore[arg-type]
    texts = [torch.randn(5, 384), torch.randn(3, 384)]
    on_cpu, _ = generate(model, tcfg, scfg, texts, vae, ["in.mp4"], device=torch.device("cpu"))
    on_gpu, _ = generate(model, tcfg, scfg, texts, vae, ["in.mp4"])  # sample_device(): cuda
    assert next(model.parameters()).is_cuda
    for a, b in zip(on_cpu, on_gpu, strict=True):
        assert b.device.type == "cpu"
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-3)


def test_edit_strength_controls_distance_from_input(parts: dict) -> None:  # type: ignore[type-arg]
    model, tcfg = _model("flow")
    inputs = [str(parts["root"] / "a.mp4")]
    base = SampleConfig(mode="edit", frames=9, height=32, width=48, steps=6, guidance=1.0)
    from trainer.sample import read_media

    z_in = parts["vae"].encode(read_media(inputs[0], 9, 32, 48)[None])[0]
    dist = []
    for strength in (0.1, 1.0):
        base.strength = strength
        lat, _ = generate(model, tcfg, base, [torch.randn(4, 384)], parts["vae"], inputs)
        dist.append(float((lat[0] - z_in).pow(2).mean()))
    assert dist[0] < dist[1] / 4


def test_errors_name_the_problem(parts: dict) -> None:  # type: ignore[type-arg]
    model, tcfg = _model("flow")
    with pytest.raises(ValueError, match="multiples of 16"):
        generate(model, tcfg, SampleConfig(height=40), [torch.randn(2, 384)], parts["vae"])
    with pytest.raises(ValueError, match="needs 2 --input"):
        generate(
            model,
            tcfg,
            SampleConfig(mode="interpolate", frames=13, height=32, width=32),
            [torch.randn(2, 384)],
            parts["vae"],
            [str(parts["root"] / "a.mp4")],
        )
    bad = parts["root"] / "bad.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(ValueError, match=r"bad.mp4: cannot read"):
        generate(
            model,
            tcfg,
            SampleConfig(mode="i2v", frames=9, height=32, width=32),
            [torch.randn(2, 384)],
            parts["vae"],
            [str(bad)],
        )


def test_cli_from_exported_weights(parts: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    from safetensors.torch import save_file

    model, tcfg = _model("flow")
    export = tmp_path / "export"
    export.mkdir()
    save_file(model.state_dict(), str(export / "model.safetensors"))
    (export / "config.json").write_text(json.dumps(to_dict(tcfg)))
    out = tmp_path / "out"
    argv = [
        "sample",
        "--checkpoint",
        str(export),
        "--vae",
        str(parts["root"] / "vae"),
        "--output",
        str(out),
    ]
    argv += ["--prompt", "a red circle moving right", "--prompt", "a blue square", "--frames", "9"]
    argv += ["--height", "32", "--width", "48", "--steps", "3", "--seed", "7"]
    assert main(argv) == 0
    rec = json.loads((out / "00-a-red-circle-moving-right.json").read_text())
    assert (
        rec["seed"] == 7
        and rec["prompt"] == "a red circle moving right"
        and rec["sample"]["steps"] == 3
    )
    assert (out / "00-a-red-circle-moving-right.mp4").stat().st_size > 0
    from PIL import Image

    sheet = np.asarray(Image.open(out / "contact_sheet.png"))
    assert sheet.shape[0] == 2 * (32 + 2)
    # text-to-image: one frame, a png only
    assert (
        main(
            [
                *argv[:-8],
                "--frames",
                "1",
                "--height",
                "32",
                "--width",
                "32",
                "--output",
                str(tmp_path / "img"),
            ]
        )
        == 0
    )
    assert np.asarray(Image.open(tmp_path / "img" / "00-a-red-circle-moving-right.png")).shape == (
        32,
        32,
        3,
    )
    assert main([*argv, "--mode", "i2v"]) == 1  # no --input: a clear error, exit 1


def test_frames_follow_the_vaes_time_stride() -> None:
    """1 + 2k frames sample on a 2x-time VAE (the demo's); on a 4x one they are refused by name."""
    from types import SimpleNamespace

    model_cfg = SimpleNamespace(patch=(1, 2, 2), in_channels=4)
    cfg = SampleConfig(frames=7, height=32, width=32)
    cfg.validate()
    assert latent_grid(cfg, model_cfg, SimpleNamespace(time_stride=2, space_stride=4)) == (
        4,
        4,
        8,
        8,
    )
    with pytest.raises(ValueError, match=r"1 \+ 4k for this VAE \(time stride 4\), got 7"):
        latent_grid(cfg, model_cfg, SimpleNamespace(time_stride=4, space_stride=4))
    with pytest.raises(ValueError, match="frames must be >= 1"):
        SampleConfig(frames=0).validate()
