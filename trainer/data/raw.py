"""Training straight from clip shards (`spacetime shard` output): latents and caption states are
computed on the fly by a frozen VAE and text encoder, instead of read from `spacetime encode`'s
cache.

The plan needs every sample's latent shape before anything is decoded; it comes from the shard
job's manifest.parquet (frames, height, width of each clip) and the VAE's strides, exactly as
`encode` would produce it (frames cut to `max_frames`, then to 1 + (time stride)k). Captions come from a
caption set (`spacetime recaption` output) when given, else the clip's own `txt`. Encoding runs
where the shard reader runs (the training process, or its reader workers), one clip at a time in
exact temporal chunks. Use cached latents for long runs: encoding every clip every epoch costs a
VAE forward per sample; this path is for trying a dataset or a VAE without an encode pass.
"""

from __future__ import annotations

import io
import logging
from types import SimpleNamespace
from typing import Any

import pyarrow.parquet as pq
import torch

from infra.media import decode_frames
from infra.shards import SELECTION, caption_texts, open_clips
from infra.storage import Storage
from infra.uris import join
from trainer.data.plan import Entry, Index
from trainer.text.encoder import TextEncoder, TextEncoderConfig
from trainer.vae.pixels import to_signed
from trainer.vae.pretrained import VideoVAE, crop_to_stride

log = logging.getLogger(__name__)


def latent_frames(frames: int, max_frames: int, time_stride: int) -> int:
    """Frames `encode` keeps of a clip (1 + stride*k, at most max_frames)."""
    t = min(frames, max_frames)
    return 1 + time_stride * ((t - 1) // time_stride)


def clip_index(clips: str, storage: Storage, vae_cfg: Any, max_frames: int) -> Index:
    """The plan's index for raw clip shards, from manifest.parquet (or a `spacetime curate`
    selection's selection.parquet, which has the manifest's columns); no video is read."""
    uri = join(clips, SELECTION)
    if not storage.exists(uri):
        uri = join(clips, "manifest.parquet")
    if not storage.exists(uri):
        raise FileNotFoundError(
            f"{uri}: not found; train.data.clips must be `spacetime shard` or `curate` output"
        )
    try:
        table = pq.read_table(io.BytesIO(storage.read_bytes(uri)))
    except (OSError, ValueError) as e:  # pyarrow raises both for a damaged file
        raise ValueError(f"{uri}: cannot read the manifest ({e})") from None
    missing = sorted({"key", "shard", "frames", "height", "width"} - set(table.column_names))
    if missing:
        raise ValueError(f"{uri}: the manifest lacks column(s) {', '.join(missing)}")
    rows = sorted((SimpleNamespace(**r) for r in table.to_pylist()), key=lambda r: (r.shard, r.key))
    shards = open_clips(clips, storage).shards
    pos = {s.rsplit("/", 1)[-1]: i for i, s in enumerate(shards)}
    ts, ss, c = vae_cfg.time_stride, vae_cfg.space_stride, vae_cfg.latent_channels
    entries = []
    for r in rows:
        if r.shard not in pos:
            raise FileNotFoundError(f"{clips}: the manifest names {r.shard}, which is missing")
        t = 1 + (latent_frames(int(r.frames), max_frames, ts) - 1) // ts
        # sides not a multiple of the stride are centre-cropped (trainer.vae.pretrained)
        entries.append(Entry(pos[r.shard], r.key, (c, t, r.height // ss, r.width // ss), 0))
    if not entries:
        raise FileNotFoundError(f"{clips}: the manifest lists no clips")
    return Index(shards, entries)


class ClipEncoder:
    """Turns one clip-shard sample into a training sample: (normalised latent, caption states)."""

    def __init__(
        self,
        vae_dir: str,
        text_path: str | None,
        text_max_length: int,
        max_frames: int,
        captions: str,
        storage: Storage,
    ):
        self.vae = VideoVAE(vae_dir)
        self.text = TextEncoder(TextEncoderConfig(path=text_path, max_length=text_max_length))
        self.max_frames = max_frames
        self.captions: dict[str, str] = {}
        if captions:
            self.captions = caption_texts(captions, storage)
            log.info("on-the-fly encoding: %d captions from %s", len(self.captions), captions)

    def __call__(
        self, shard: str, s: dict[str, Any], shape: tuple[int, ...]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ts = self.vae.time_stride
        want = 1 + ts * (shape[1] - 1)
        frames = decode_frames(s["mp4"], max_frames=want)
        if frames.shape[0] < want:
            raise ValueError(
                f"{shard}: clip {s['__key__']} decoded to {frames.shape[0]} frames, the manifest "
                f"promised at least {want}"
            )
        x = to_signed(frames)[None]
        z = self.vae.encode(crop_to_stride(x, self.vae.space_stride))[0].contiguous()
        caption = self.captions.get(s["__key__"]) or s.get("txt", b"").decode("utf-8")
        return z, self.text.encode([caption])[0].contiguous()
