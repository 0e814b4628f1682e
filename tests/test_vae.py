"""trainer.vae: shapes, causality, images, odd aspect ratios, chunked == whole, save/load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from trainer.vae.config import VAEConfig
from trainer.vae.model import CausalVAE, _tiled


@pytest.fixture(scope="module")
def vae() -> CausalVAE:
    torch.manual_seed(0)
    return CausalVAE(VAEConfig.named("tiny")).double().eval()


def video(t: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, 3, t, h, w, generator=g, dtype=torch.float64) * 2 - 1


@pytest.mark.parametrize(("t", "h", "w"), [(9, 32, 48), (1, 32, 32), (5, 40, 72), (13, 16, 8)])
def test_shapes_images_and_odd_aspect_ratios(vae: CausalVAE, t: int, h: int, w: int) -> None:
    with torch.no_grad():
        post = vae.encode(video(t, h, w))
        assert post.mean.shape == (1, 4, 1 + (t - 1) // 4, h // 8, w // 8)
        assert vae.decode(post.mean).shape == (1, 3, t, h, w)
        assert post.kl().shape == (1,) and torch.isfinite(post.kl()).all()


def test_bad_shapes_are_rejected(vae: CausalVAE) -> None:
    with pytest.raises(ValueError, match=r"T = 1 \+ 4k"):
        vae.encode(video(8, 32, 32))
    with pytest.raises(ValueError, match="multiples of 8"):
        vae.encode(video(5, 30, 32))


def test_causality(vae: CausalVAE) -> None:
    x = video(13, 32, 32)
    with torch.no_grad():
        z = vae.encode(x).mean
        for first_changed in (1, 5, 9):  # latent frame j sees input frames <= 4j only
            x2 = x.clone()
            x2[:, :, first_changed:] += 0.5
            z2 = vae.encode(x2).mean
            keep = (first_changed - 1) // 4 + 1
            assert torch.equal(z[:, :, :keep], z2[:, :, :keep])
            assert not torch.equal(z[:, :, keep:], z2[:, :, keep:])
        # The decoder is causal too: output frame 0 comes from latent frame 0 alone.
        z3 = z.clone()
        z3[:, :, 1:] += 1
        assert torch.equal(vae.decode(z)[:, :, 0], vae.decode(z3)[:, :, 0])


def test_temporal_chunks_equal_whole_clip(vae: CausalVAE) -> None:
    x = video(17, 24, 40)
    with torch.no_grad():
        z = vae.encode(x).mean
        for chunk in (1, 2, 3):
            torch.testing.assert_close(
                vae.encode_chunked(x, chunk_latent_frames=chunk), z, rtol=0, atol=1e-12
            )
            torch.testing.assert_close(
                vae.decode_chunked(z, chunk_latent_frames=chunk), vae.decode(z), rtol=0, atol=1e-12
            )


@pytest.mark.parametrize(
    ("resample", "space", "patch"),
    [("average", 4, 1), ("learned", 4, 1), ("learned", 2, 1), ("learned", 4, 2), ("learned", 8, 2)],
)
def test_time_stride_2_and_learned_resampling_are_causal_and_chunk_exactly(
    resample: str, space: int, patch: int
) -> None:
    from trainer.vae.config import VAETrainConfig

    train_cfg = VAETrainConfig(
        time_stride=2, space_stride=space, temporal_resample=resample, patch=patch
    )
    train_cfg.validate()
    cfg = train_cfg.vae_config()
    assert (cfg.time_stride, cfg.space_stride) == (2, space)
    torch.manual_seed(0)
    vae = CausalVAE(cfg).double().eval()
    # Pixels folded into channels: the first and last convolutions see 3 x patch^2 channels, and
    # one fewer spatial downsample per doubling of the patch.
    assert (
        vae.encoder.conv_in.conv.in_channels
        == 3 * patch**2
        == vae.decoder.conv_out.conv.out_channels
    )
    assert len(cfg.channel_mults) == 1 + (space // patch).bit_length() - 1
    x = video(13, 24, 40)
    with torch.no_grad():
        z = vae.encode(x).mean
        assert z.shape == (1, 4, 7, 24 // space, 40 // space) and vae.decode(z).shape == x.shape
        x2 = x.clone()
        x2[:, :, 5:] += 0.5  # latent frame j sees input frames <= 2j only
        assert torch.equal(vae.encode(x2).mean[:, :, :3], z[:, :, :3])
        for chunk in (1, 2, 3):
            torch.testing.assert_close(vae.encode_chunked(x, chunk), z, rtol=0, atol=1e-12)
            torch.testing.assert_close(
                vae.decode_chunked(z, chunk), vae.decode(z), rtol=0, atol=1e-12
            )
        if resample == "learned":  # the pair mixers are there and used
            mixers = [m for m in vae.modules() if getattr(m, "mix", None) is not None]
            assert len(mixers) == 1
            torch.nn.init.zeros_(mixers[0].mix.weight)
            assert not torch.equal(vae.encode(x).mean, z)


def test_spatial_tiling_blends_overlaps_exactly_for_a_local_op() -> None:
    # The tiling machinery itself: an operator with a small receptive field is reproduced exactly
    # away from tile borders' reach, and the blend weights sum to one everywhere.
    x = torch.rand(1, 2, 3, 64, 96, dtype=torch.float64)

    def down(v: torch.Tensor) -> torch.Tensor:  # 8x average pooling per frame: purely local
        b, c, t, h, w = v.shape
        return (
            F.avg_pool2d(v.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w), 8)
            .reshape(b, t, c, h // 8, w // 8)
            .permute(0, 2, 1, 3, 4)
        )

    torch.testing.assert_close(_tiled(down, x, tile=32, overlap=16, stride=8, down=True), down(x))
    z = down(x)

    def up(v: torch.Tensor) -> torch.Tensor:
        return v.repeat_interleave(8, dim=-1).repeat_interleave(8, dim=-2)

    torch.testing.assert_close(_tiled(up, z, tile=4, overlap=2, stride=8, down=False), up(z))


def test_save_and_load_pretrained(vae: CausalVAE, tmp_path: Path) -> None:
    vae.cfg.latent_mean, vae.cfg.latent_std = [0.1, 0.2, 0.3, 0.4], [1.0, 2.0, 3.0, 4.0]
    vae.save_pretrained(tmp_path / "vae")
    loaded = CausalVAE.from_pretrained(tmp_path / "vae").double().eval()
    x = video(5, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(x).mean, vae.encode(x).mean)
    z = torch.randn(1, 4, 2, 2, 2, dtype=torch.float64)
    torch.testing.assert_close(loaded.denormalize(loaded.normalize(z)), z)
    assert loaded.normalize(z)[0, 1].mean() != z[0, 1].mean()
    with pytest.raises(FileNotFoundError, match="not a VAE directory"):
        CausalVAE.from_pretrained(tmp_path)
    # A VAE saved before patch_size existed loads as unpatched.
    cfg_file = tmp_path / "vae" / "config.json"
    raw = json.loads(cfg_file.read_text())
    cfg_file.write_text(json.dumps({k: v for k, v in raw.items() if k != "patch_size"}))
    assert (
        raw["patch_size"] == 1 and CausalVAE.from_pretrained(tmp_path / "vae").cfg.patch_size == 1
    )


def test_a_patch_that_leaves_time_no_downsample_is_refused() -> None:
    from trainer.vae.config import VAETrainConfig

    with pytest.raises(ValueError, match="patch x time_stride"):
        VAETrainConfig(time_stride=4, space_stride=4, patch=2).validate()
    VAETrainConfig(time_stride=4, space_stride=8, patch=2).validate()


def _loss_of(rec: torch.Tensor, x: torch.Tensor, **settings: float) -> float:
    """vae_loss (MSE, no temporal term) of a model whose reconstruction of `x` is `rec`."""
    from trainer.vae.config import VAETrainConfig
    from trainer.vae.model import Posterior
    from trainer.vae.train import vae_loss

    class Fixed(torch.nn.Module):
        def forward(self, x: torch.Tensor, noise: torch.Tensor) -> tuple:  # type: ignore[type-arg]
            z = torch.zeros(1, 4, 2, 4, 4)
            return rec, Posterior(z, z)

    cfg = VAETrainConfig(temporal_weight=0.0, recon_loss="mse", **settings)  # type: ignore[arg-type]
    return float(vae_loss(Fixed(), x, torch.zeros(1), cfg))


def test_spatial_weight_penalises_soft_edges_not_a_flat_error() -> None:
    """vae_train.spatial_weight: L1 on the error's neighbour differences along H and W. Two
    reconstructions of a square with the same squared error: a uniform offset costs nothing
    extra, the same error put on the square's outline (soft edges, round corners) does."""
    x = -torch.ones(1, 3, 3, 16, 16)
    x[..., 4:12, 4:12] = 1.0
    edge = torch.zeros(16, 16, dtype=torch.bool)
    edge[4:12, 4:12] = True
    edge[5:11, 5:11] = False  # the square's outline ring
    flat = x + 0.1
    soft = x.clone()
    soft[..., edge] -= 0.1 * (256 / edge.sum()).sqrt()  # the same squared error, on the outline

    def loss(rec: torch.Tensor, w: float) -> float:
        return _loss_of(rec, x, spatial_weight=w)

    assert loss(flat, 0.0) == pytest.approx(loss(soft, 0.0))
    assert loss(flat, 1.0) == pytest.approx(loss(flat, 0.0))
    assert loss(soft, 1.0) > loss(soft, 0.0) + 0.01


def test_foreground_weight_counts_an_error_on_the_object_more() -> None:
    """vae_train.foreground_weight: the same squared error costs more on the object (pixels away
    from the crop's median colour) than on the background, by the weight over the mean weight;
    weight 1 is the plain MSE."""
    from trainer.vae.config import VAETrainConfig
    from trainer.vae.train import foreground

    x = torch.zeros(1, 3, 3, 16, 16)  # grey background
    x[:, 2, :, 4:8, 4:8] = 0.8  # a blue-ish 4x4 object: 16 of 256 pixels a frame
    fg = foreground(x)
    assert fg.shape == (1, 1, 3, 16, 16) and int(fg.sum()) == 3 * 16
    assert int(foreground(x, margin=2).sum()) == 3 * 8 * 8  # and 2 pixels around it
    on_obj, on_bg = x.clone(), x.clone()
    on_obj[:, 1, :, 4:8, 4:8] += 0.5  # the object's green off by 0.5
    on_bg[:, 1, :, 11:15, 11:15] += 0.5  # the same error on 16 background pixels

    def loss(rec: torch.Tensor, w: float) -> float:
        return _loss_of(rec, x, foreground_weight=w)

    plain = 0.25 * 16 / (3 * 256)
    assert loss(on_obj, 1.0) == pytest.approx(plain) and loss(on_bg, 1.0) == pytest.approx(plain)
    mean_w = 1 + 3 * 16 / 256
    assert loss(on_obj, 4.0) == pytest.approx(plain * 4 / mean_w)
    assert loss(on_bg, 4.0) == pytest.approx(plain / mean_w)
    with pytest.raises(ValueError, match="foreground_weight"):
        VAETrainConfig(foreground_weight=0.5).validate()
