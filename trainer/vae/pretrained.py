"""Any video autoencoder behind one interface: spacetime's own causal VAE, or a diffusers video
autoencoder folder (Wan, HunyuanVideo, CogVideoX, LTX-Video), recognised by its config's
`_class_name`.

What the rest of spacetime needs of a VAE: encode (B, 3, T, H, W) in [-1, 1] to *normalised*
latents (the posterior mean, then the family's own normalisation), decode them back, its time and
space strides and latent channels (frame rule: T = 1 + time_stride * k), and an identity (class,
config hash, weights hash) so latents of different VAEs never mix. Every number comes from the
model's own config (and, for LTX-Video, its `latents_mean`/`latents_std` buffers), never hard-coded:

| family | strides from config | normalisation | memory-bounded encode/decode |
|---|---|---|---|
| spacetime | `temporal_down`, `channel_mults` | per-channel `latent_mean`/`latent_std` | exact temporal chunks (conv caches), blended spatial tiles |
| Wan | `temperal_downsample`, `dim_mult` | `(z - latents_mean) / latents_std` | its encoder always runs 4 frames at a time with feature caches (exact); `--tile`: its spatial tiling (blended) |
| HunyuanVideo | `*_compression_ratio` | `z * scaling_factor` | `--tile`: its spatial and temporal tiling (blended) |
| CogVideoX | `temporal_compression_ratio`, `block_out_channels` | `(z - shift_factor) * scaling_factor` | its encoder runs frame batches with conv caches (exact); `--tile`: spatial tiling |
| LTX-Video | `patch_size(_t)`, `spatio_temporal_scaling` | `(z - mean) * scaling_factor / std` (buffers) | `--tile`: its spatial and temporal tiling |
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainer.vae.model import CausalVAE

DIFFUSERS_FAMILIES = {
    "AutoencoderKLWan": "Wan",
    "AutoencoderKLHunyuanVideo": "HunyuanVideo",
    "AutoencoderKLCogVideoX": "CogVideoX",
    "AutoencoderKLLTXVideo": "LTX-Video",
}
WEIGHTS = (".safetensors", ".bin")


@dataclass(frozen=True)
class VAEInfo:
    """What planning needs, read from the config alone (no weights)."""

    family: str
    """`spacetime` or a diffusers class name."""
    time_stride: int
    space_stride: int
    latent_channels: int

    def frames_for(self, latent_frames: int) -> int:
        return 1 + self.time_stride * (latent_frames - 1)


def _config(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    conf = p / "config.json"
    if not conf.is_file() or not any(f.suffix in WEIGHTS for f in p.iterdir()):
        raise FileNotFoundError(f"{p}: not a VAE directory (needs config.json and weights)")
    return json.loads(conf.read_text())


def vae_info(path: str | Path) -> VAEInfo:
    raw = _config(path)
    name = raw.get("_class_name")
    if name is None:  # spacetime's own
        cfg = CausalVAE.config_of(path)
        return VAEInfo("spacetime", cfg.time_stride, cfg.space_stride, cfg.latent_channels)
    if name not in DIFFUSERS_FAMILIES:
        raise ValueError(
            f"{path}: {name} is not a video autoencoder spacetime knows "
            f"(one of: spacetime's own, {', '.join(DIFFUSERS_FAMILIES)})"
        )
    return VAEInfo(name, *_strides(name, _full_config(name, raw)), _channels(name, raw))


def _diffusers() -> Any:
    try:
        import diffusers  # the `pretrained` extra; imported only for a diffusers folder
    except ImportError:
        raise ImportError(
            "a diffusers VAE folder needs diffusers: pip install 'spacetime[pretrained]'"
        ) from None
    return diffusers


@functools.cache
def _defaults(name: str) -> dict[str, Any]:
    sig = inspect.signature(getattr(_diffusers(), name).__init__)
    return {k: v.default for k, v in sig.parameters.items() if k != "self"}


def _full_config(name: str, raw: dict[str, Any]) -> dict[str, Any]:
    """The config with the class's defaults for keys the saved one leaves out."""
    return {**_defaults(name), **{k: v for k, v in raw.items() if not k.startswith("_")}}


def _strides(name: str, c: dict[str, Any]) -> tuple[int, int]:
    if name == "AutoencoderKLWan":
        patch = c.get("patch_size") or 1
        return 2 ** sum(map(bool, c["temperal_downsample"])), patch * 2 ** (len(c["dim_mult"]) - 1)
    if name == "AutoencoderKLHunyuanVideo":
        return c["temporal_compression_ratio"], c["spatial_compression_ratio"]
    if name == "AutoencoderKLCogVideoX":
        return c["temporal_compression_ratio"], 2 ** (len(c["block_out_channels"]) - 1)
    # LTX-Video: each scaling block halves time and space; then the patchifier
    if c.get("spatial_compression_ratio") and c.get("temporal_compression_ratio"):
        return c["temporal_compression_ratio"], c["spatial_compression_ratio"]
    scale = 2 ** sum(map(bool, c["spatio_temporal_scaling"]))
    return c["patch_size_t"] * scale, c["patch_size"] * scale


def _channels(name: str, raw: dict[str, Any]) -> int:
    c = _full_config(name, raw)
    return int(c["z_dim"] if name == "AutoencoderKLWan" else c["latent_channels"])


def vae_identity(path: str | Path) -> dict[str, str]:
    """Class, config hash and weights hash; `tag` is the short id recorded with every latent."""
    p = Path(path)
    raw = _config(p)
    weights = hashlib.sha256()
    for f in sorted(f for f in p.iterdir() if f.suffix in WEIGHTS):
        weights.update(_file_sha256(str(f), f.stat().st_mtime_ns, f.stat().st_size).encode())
    conf = hashlib.sha256((p / "config.json").read_bytes()).hexdigest()
    ident = {
        "class": raw.get("_class_name", "CausalVAE"),
        "config_sha256": conf,
        "weights_sha256": weights.hexdigest(),
    }
    tag = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]
    return {**ident, "tag": f"vae-{tag}"}


@functools.cache
def _file_sha256(path: str, mtime_ns: int, size: int) -> str:  # cached per version of the file
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def crop_to_stride(x: torch.Tensor, stride: int) -> torch.Tensor:
    """(..., H, W) centre-cropped to multiples of the VAE's space stride: clips are cut to
    multiples of 16 (`shard.size_multiple`), LTX-Video's stride is 32."""
    h, w = x.shape[-2:]
    top, left = (h % stride) // 2, (w % stride) // 2
    return x[..., top : top + h - h % stride, left : left + w - w % stride]


class VideoVAE:
    """One loaded autoencoder: `encode` gives normalised latents, `decode` takes them."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        self.info = vae_info(path)
        self.identity = vae_identity(path)
        self.tag = self.identity["tag"]
        if self.info.family == "spacetime":
            self.own: CausalVAE | None = CausalVAE.from_pretrained(path).eval()
            self.model: Any = self.own
            c = self.own.cfg.latent_channels
            self.mean = torch.tensor(self.own.cfg.latent_mean or [0.0] * c)
            self.std = torch.tensor(self.own.cfg.latent_std or [1.0] * c)
            self.scale = 1.0
        else:
            self.own = None
            # low_cpu_mem_usage needs `accelerate`; a VAE is small enough to load plainly.
            cls = getattr(_diffusers(), self.info.family)
            self.model = cls.from_pretrained(path, low_cpu_mem_usage=False).eval()
            self.mean, self.std, self.scale = _normalisation(self.model, self.info.latent_channels)

    @property
    def time_stride(self) -> int:
        return self.info.time_stride

    @property
    def space_stride(self) -> int:
        return self.info.space_stride

    @property
    def latent_channels(self) -> int:
        return self.info.latent_channels

    def check_shape(self, x: torch.Tensor) -> None:
        _, _, t, h, w = x.shape
        ts, ss = self.time_stride, self.space_stride
        if (t - 1) % ts or h % ss or w % ss:
            raise ValueError(
                f"{self.info.family} VAE: video (T, H, W) = ({t}, {h}, {w}) needs T = 1 + {ts}k "
                f"and H, W multiples of {ss}"
            )

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(z)
        return (z - mean) * self.scale / std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(z)
        return z * std / self.scale + mean

    def _stats(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (-1, 1, 1, 1) if z.dim() == 4 else (1, -1, 1, 1, 1)
        return (
            self.mean.to(z.device, z.dtype).view(shape),
            self.std.to(z.device, z.dtype).view(shape),
        )

    @torch.no_grad()
    def encode(
        self, x: torch.Tensor, chunk_latent_frames: int = 4, tile: int | None = None
    ) -> torch.Tensor:
        """(B, 3, T, H, W) in [-1, 1] -> normalised posterior means (B, C, t, h, w)."""
        self.check_shape(x)
        if self.own is not None:
            return self.normalize(self.own.encode_chunked(x, chunk_latent_frames, tile=tile))
        with self._tiling(tile):
            return self.normalize(self.model.encode(x).latent_dist.mode())

    @torch.no_grad()
    def decode(
        self, z: torch.Tensor, chunk_latent_frames: int = 4, tile: int | None = None
    ) -> torch.Tensor:
        """Normalised latents (B, C, t, h, w) -> video (B, 3, T, H, W), about [-1, 1]."""
        if self.own is not None:
            return self.own.decode_chunked(self.denormalize(z), chunk_latent_frames, tile=tile)
        with self._tiling(tile and tile * self.space_stride):
            return self.model.decode(self.denormalize(z)).sample

    @contextlib.contextmanager
    def _tiling(self, tile: int | None) -> Iterator[None]:
        """The family's own tiling with `tile`-pixel tiles overlapping by about a quarter."""
        if not tile:
            yield
            return
        ss = self.space_stride
        stride = max(ss, tile * 3 // 4 // ss * ss)  # whole latent pixels
        want = {
            "tile_sample_min_height": tile,
            "tile_sample_min_width": tile,
            "tile_sample_stride_height": stride,
            "tile_sample_stride_width": stride,
            "tile_overlap_factor_height": 0.25,
            "tile_overlap_factor_width": 0.25,
        }
        known = inspect.signature(self.model.enable_tiling).parameters
        self.model.enable_tiling(**{k: v for k, v in want.items() if k in known})
        try:
            yield
        finally:
            self.model.disable_tiling()


def _normalisation(model: Any, channels: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(mean, std, scale) with normalised = (z - mean) * scale / std, from the model's config
    (latents_mean/std, shift_factor, scaling_factor) or its latents_mean/std buffers (LTX)."""
    c = model.config
    mean = getattr(c, "latents_mean", None)
    std = getattr(c, "latents_std", None)
    buffers = dict(model.named_buffers())
    if mean is None and "latents_mean" in buffers:
        mean, std = buffers["latents_mean"].float(), buffers["latents_std"].float()
    if mean is None:
        mean = [getattr(c, "shift_factor", None) or 0.0] * channels
    if std is None:
        std = [1.0] * channels
    scale = getattr(c, "scaling_factor", None) or 1.0
    return torch.as_tensor(mean).float(), torch.as_tensor(std).float(), float(scale)
