"""Causal 3D convolutional VAE: video (3, T, H, W) <-> latent (C, 1 + (T-1)/4, H/8, W/8).

The design follows the causal video VAEs of CogVideoX / HunyuanVideo / Wan: every convolution is
causal in time (padded only with past frames) and normalisation is per frame, so latent frame j
depends only on input frames <= 4j and the first frame is encoded on its own: an image is a 1-frame
video. Time is downsampled 2x twice (the first frame kept alone each time), space 2x three times.

Long or large inputs are encoded and decoded in chunks: temporal chunks carry each causal
convolution's last input frames over to the next chunk (a conv cache), which makes chunked output
equal to whole-clip output; spatial tiles overlap and are blended linearly.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from trainer.vae.config import VAEConfig
from trainer.vae.resample import Downsample, Upsample, per_frame


class CausalConv3d(nn.Module):
    """Conv3d padded in time with past frames only (the first frame repeated at the start of a clip,
    or the previous chunk's frames when chunking)."""

    def __init__(self, cin: int, cout: int, kernel: int = 3):
        super().__init__()
        self.pad_t = kernel - 1
        self.conv = nn.Conv3d(cin, cout, kernel, padding=(0, kernel // 2, kernel // 2))
        self.cache: torch.Tensor | None = None
        self.caching = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T, H, W)
        if self.pad_t:
            past = (
                self.cache
                if (self.caching and self.cache is not None)
                else x[:, :, :1].expand(-1, -1, self.pad_t, -1, -1)
            )
            padded = torch.cat([past, x], dim=2)
            if self.caching:
                self.cache = padded[:, :, -self.pad_t :].detach()
            x = padded
        if (
            x.device.type == "cpu"
            and x.dtype == torch.float32
            and torch.backends.mkldnn.is_available()
        ):
            # PyTorch sends a batch of one with N*C*T*H <= 20480 (any short chunk or small clip)
            # to its reference conv3d, 3-7x slower than oneDNN's on this CPU; call oneDNN directly.
            c = self.conv
            return torch.ops.aten.mkldnn_convolution(
                x.contiguous(), c.weight, c.bias, c.padding, c.stride, c.dilation, c.groups
            )
        return self.conv(x)


def frame_norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, ch // 4) or 1, ch, eps=1e-6)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1, self.conv1 = frame_norm(cin), CausalConv3d(cin, cout)
        self.norm2, self.conv2 = frame_norm(cout), CausalConv3d(cout, cout)
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(per_frame(self.norm1, x)))
        h = self.conv2(F.silu(per_frame(self.norm2, h)))
        return self.skip(x) + h


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        chs = [cfg.base_channels * m for m in cfg.channel_mults]
        p = cfg.patch_size
        self.fold = nn.PixelUnshuffle(p) if p > 1 else None
        self.conv_in = CausalConv3d(cfg.in_channels * p**2, chs[0])
        layers: list[nn.Module] = []
        cin = chs[0]
        for level, ch in enumerate(chs):
            for _ in range(cfg.layers_per_block):
                layers.append(ResBlock(cin, ch))
                cin = ch
            if level < len(chs) - 1:
                layers.append(
                    Downsample(ch, cfg.temporal_down[level], cfg.temporal_resample == "learned")
                )
        self.body = nn.Sequential(*layers, ResBlock(cin, cin))
        self.norm = frame_norm(cin)
        self.conv_out = CausalConv3d(cin, 2 * cfg.latent_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fold is not None:
            x = per_frame(self.fold, x)
        h = self.body(self.conv_in(x))
        return self.conv_out(F.silu(per_frame(self.norm, h)))


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        chs = [cfg.base_channels * m for m in cfg.channel_mults]
        cin = chs[-1]
        self.conv_in = CausalConv3d(cfg.latent_channels, cin)
        layers: list[nn.Module] = [ResBlock(cin, cin)]
        for level in reversed(range(len(chs))):
            for _ in range(cfg.layers_per_block):
                layers.append(ResBlock(cin, chs[level]))
                cin = chs[level]
            if level > 0:
                layers.append(
                    Upsample(cin, cfg.temporal_down[level - 1], cfg.temporal_resample == "learned")
                )
        self.body = nn.Sequential(*layers)
        self.norm = frame_norm(cin)
        p = cfg.patch_size
        self.unfold = nn.PixelShuffle(p) if p > 1 else None
        self.conv_out = CausalConv3d(cin, cfg.in_channels * p**2)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.conv_out(F.silu(per_frame(self.norm, self.body(self.conv_in(z)))))
        return per_frame(self.unfold, out) if self.unfold is not None else out


@dataclass
class Posterior:
    """Diagonal Gaussian q(z | x) (KL-regularised, sampled with the reparameterisation trick)."""

    mean: torch.Tensor
    logvar: torch.Tensor

    def sample(
        self, generator: torch.Generator | None = None, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        eps = (
            noise
            if noise is not None
            else torch.randn(self.mean.shape, generator=generator, dtype=self.mean.dtype)
        )
        eps = eps.to(device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + (0.5 * self.logvar).exp() * eps

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) per sample, summed over latent elements."""
        return 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1 - self.logvar).flatten(1).sum(1)


class CausalVAE(nn.Module):
    def __init__(self, cfg: VAEConfig | None = None):
        super().__init__()
        self.cfg = cfg or VAEConfig()
        self.encoder = Encoder(self.cfg)
        self.decoder = Decoder(self.cfg)

    # ------------------------------------------------------------------ whole-clip paths
    def check_shape(self, x: torch.Tensor) -> None:
        _, _, t, h, w = x.shape
        ts, ss = self.cfg.time_stride, self.cfg.space_stride
        if (t - 1) % ts or h % ss or w % ss:
            raise ValueError(
                f"video (T, H, W) = ({t}, {h}, {w}) needs T = 1 + {ts}k and H, W multiples of {ss}"
            )

    def encode(self, x: torch.Tensor) -> Posterior:
        """(B, 3, T, H, W) in [-1, 1] -> posterior over (B, C, 1 + (T-1)/4, H/8, W/8)."""
        self.check_shape(x)
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return Posterior(mean, logvar.clamp(-30.0, 20.0))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(
        self,
        x: torch.Tensor,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Posterior]:
        """`noise`: the reparameterisation's N(0, I) draw, given when it must not depend on how
        the batch is split across ranks."""
        post = self.encode(x)
        return self.decode(post.sample(generator, noise)), post

    # ------------------------------------------------------------------ latent normalisation
    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(z)
        return (z - mean) / std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(z)
        return z * std + mean

    def _stats(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.cfg.latent_channels
        mean = torch.tensor(self.cfg.latent_mean or [0.0] * c, dtype=z.dtype, device=z.device)
        std = torch.tensor(self.cfg.latent_std or [1.0] * c, dtype=z.dtype, device=z.device)
        shape = (c, 1, 1, 1) if z.dim() == 4 else (1, c, 1, 1, 1)
        return mean.view(shape), std.view(shape)

    # ------------------------------------------------------------------ chunked paths
    @contextlib.contextmanager
    def _chunking(self, module: nn.Module) -> Iterator[None]:
        convs = [m for m in module.modules() if isinstance(m, CausalConv3d)]
        resamplers = [m for m in module.modules() if isinstance(m, Downsample | Upsample)]
        for m in convs:
            m.caching, m.cache = True, None
        try:
            yield
        finally:
            for m in convs:
                m.caching, m.cache = False, None
            for m in resamplers:
                m.first_chunk = True

    def _set_first_chunk(self, module: nn.Module, first: bool) -> None:
        for m in module.modules():
            if isinstance(m, Downsample | Upsample):
                m.first_chunk = first

    @torch.no_grad()
    def encode_chunked(
        self,
        x: torch.Tensor,
        chunk_latent_frames: int = 4,
        tile: int | None = None,
        overlap: int = 16,
    ) -> torch.Tensor:
        """Posterior means of a long or large clip, `chunk_latent_frames` latent frames at a time
        (exact: conv caches carry the past across chunks) and, with `tile`, in overlapping spatial
        tiles of `tile` pixels (blended)."""
        self.check_shape(x)
        ts = self.cfg.time_stride
        bounds = [0, 1 + ts * (chunk_latent_frames - 1)]
        while bounds[-1] < x.shape[2]:
            bounds.append(min(x.shape[2], bounds[-1] + ts * chunk_latent_frames))

        def run(clip: torch.Tensor) -> torch.Tensor:
            outs = []
            with self._chunking(self.encoder):
                for i in range(len(bounds) - 1):
                    self._set_first_chunk(self.encoder, i == 0)
                    outs.append(
                        self.encoder(clip[:, :, bounds[i] : bounds[i + 1]]).chunk(2, dim=1)[0]
                    )
            return torch.cat(outs, dim=2)

        if tile is None:
            return run(x)
        return _tiled(run, x, tile, overlap, self.cfg.space_stride, down=True)

    @torch.no_grad()
    def decode_chunked(
        self,
        z: torch.Tensor,
        chunk_latent_frames: int = 4,
        tile: int | None = None,
        overlap: int = 2,
    ) -> torch.Tensor:
        """Decodes `chunk_latent_frames` latent frames at a time (exact) and, with `tile`, in
        overlapping spatial tiles of `tile` latent pixels (blended)."""
        bounds = [*range(0, z.shape[2], chunk_latent_frames), z.shape[2]]

        def run(lat: torch.Tensor) -> torch.Tensor:
            outs = []
            with self._chunking(self.decoder):
                for i in range(len(bounds) - 1):
                    self._set_first_chunk(self.decoder, i == 0)
                    outs.append(self.decoder(lat[:, :, bounds[i] : bounds[i + 1]]))
            return torch.cat(outs, dim=2)

        if tile is None:
            return run(z)
        return _tiled(run, z, tile, overlap, self.cfg.space_stride, down=False)

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, path: str | Path) -> None:

        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        (p / "config.json").write_text(json.dumps(asdict(self.cfg), indent=2))
        save_file(
            {k: v.contiguous() for k, v in self.state_dict().items()}, str(p / "model.safetensors")
        )

    @staticmethod
    def config_of(path: str | Path) -> VAEConfig:
        """The config of a saved VAE (no weights read)."""
        p = Path(path)
        if not (p / "config.json").is_file() or not (p / "model.safetensors").is_file():
            raise FileNotFoundError(
                f"{p}: not a VAE directory (needs config.json and model.safetensors)"
            )
        raw = json.loads((p / "config.json").read_text())
        raw["channel_mults"] = tuple(raw["channel_mults"])
        raw["temporal_down"] = tuple(raw["temporal_down"])
        return VAEConfig(**raw)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> CausalVAE:
        """Loads any VAE saved with this interface (config.json + model.safetensors)."""

        p = Path(path)
        vae = cls(cls.config_of(p))
        missing, unexpected = vae.load_state_dict(
            load_file(str(p / "model.safetensors")), strict=False
        )
        if missing or unexpected:
            raise ValueError(
                f"{p}: weights do not match the config (missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
        return vae


def _tiled(run, x: torch.Tensor, tile: int, overlap: int, stride: int, down: bool) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """Runs `run` on overlapping spatial tiles of x and blends the results linearly in the overlaps.
    `down`: the output is `stride` times smaller than the input (encode), else larger (decode)."""
    h, w = x.shape[-2:]
    step = tile - overlap
    scale = (1 / stride) if down else stride
    out_h, out_w = int(h * scale), int(w * scale)
    out = weight = None
    ys = list(range(0, max(h - overlap, 1), step))
    xs = list(range(0, max(w - overlap, 1), step))
    for y0 in ys:
        for x0 in xs:
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            y0c, x0c = max(0, y1 - tile), max(0, x1 - tile)
            piece = run(x[..., y0c:y1, x0c:x1])
            if out is None:
                out = piece.new_zeros(*piece.shape[:-2], out_h, out_w)
                weight = piece.new_zeros(1, 1, 1, out_h, out_w)
            ph, pw = piece.shape[-2:]
            ramp = (
                _ramp(ph, int(overlap * scale), y0c > 0, y1 < h)[:, None]
                * _ramp(pw, int(overlap * scale), x0c > 0, x1 < w)[None, :]
            )
            oy, ox = int(y0c * scale), int(x0c * scale)
            out[..., oy : oy + ph, ox : ox + pw] += piece * ramp
            weight[..., oy : oy + ph, ox : ox + pw] += ramp
    return out / weight  # type: ignore[operator]


def _ramp(n: int, overlap: int, fade_in: bool, fade_out: bool) -> torch.Tensor:
    r = torch.ones(n)
    if overlap > 0:
        edge = torch.linspace(0, 1, overlap + 2)[1:-1]
        if fade_in:
            r[:overlap] = edge
        if fade_out:
            r[-overlap:] = edge.flip(0)
    return r
