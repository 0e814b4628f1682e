"""`spacetime encode`: cache VAE latents and text embeddings as shards beside the clip shards.

One Ray task per clip shard writes `latents-NNNNNN.tar` (same number as its `clips-NNNNNN.tar`)
and `latents-NNNNNN.index.json` (key, latent shape and text length of each sample, for planning):
`{key}.latent.safetensors` (the normalised posterior mean, (C, T', H', W'), with the VAE's tag and
latent statistics in its metadata) and `{key}.text.safetensors` (the caption's token states and
their count). Shards are published atomically, so a rerun after a crash redoes only the missing
ones. Frames are trimmed to 1 + (time stride)k and encoded in exact temporal chunks to bound memory.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import time
from typing import Any

import av
import torch
from safetensors.torch import load, save
from tqdm import tqdm

from infra.media import decode_frames
from infra.provenance import RESUME, Rerun, check_or_record, finish_job
from infra.ray_cluster import local_work_dir, ray_session
from infra.shards import (
    CAPTIONS,
    LATENTS,
    is_shard_name,
    iter_samples,
    open_clips,
    read_captions,
    selection_setting,
    sidecar,
    sidecar_uri,
    write_samples,
)
from infra.storage import Storage
from infra.storage_config import StorageConfig
from infra.uris import join, normalize, relative_to
from trainer.data.raw import latent_frames
from trainer.text.encoder import TextEncoder, TextEncoderConfig, default_model_path
from trainer.text.which import dir_id
from trainer.vae.config import EncodeConfig
from trainer.vae.pixels import to_signed
from trainer.vae.pretrained import VideoVAE, crop_to_stride, vae_identity

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=2)
def _models(
    vae_dir: str, text_path: str | None, text_max_length: int
) -> tuple[VideoVAE, TextEncoder]:
    vae = VideoVAE(vae_dir)
    return vae, TextEncoder(TextEncoderConfig(path=text_path, max_length=text_max_length))


def vae_tag(vae_dir: str) -> str:
    """A short id of the VAE (class, config and weights), so latents of different VAEs never mix."""
    return vae_identity(vae_dir)["tag"]


def settings(
    shards: str,
    vae_dir: str,
    text_path: str | None,
    captions: str | None,
    cfg: EncodeConfig,
    storage: Storage,
) -> dict[str, Any]:
    """What a latent set is made from: the clips, the VAE, the text encoder, the caption set and
    how it was made, and the encode settings."""

    made_with = ""
    if captions:
        try:
            made_with = storage.read_text(join(captions, "job.json"))
        except FileNotFoundError:
            made_with = "(no job.json)"
    return {
        "shards": normalize(shards),
        "vae": vae_tag(vae_dir),
        "text_encoder": dir_id(text_path or default_model_path()),
        "captions": normalize(captions) if captions else "",
        "captions_made_with": hashlib.sha256(made_with.encode()).hexdigest()[:12]
        if captions
        else "",
        "encode": dataclasses.asdict(cfg),
    }


def latent_record(
    key: str,
    latent: torch.Tensor,
    text_states: torch.Tensor,
    caption: str,
    tag: str,
    vae: Any,
    frames: int,
    text_encoder: str,
) -> dict[str, Any]:
    """One sample of a latent shard, in the format trainer.data reads: the latent is normalised
    ((z - latent_mean) * latent_scale / latent_std, the VAE family's own rule)."""
    meta = {"vae": tag, "shape": json.dumps(list(latent.shape)), "frames": str(frames)}
    meta |= {
        "latent_mean": json.dumps([float(v) for v in vae.mean]),
        "latent_std": json.dumps([float(v) for v in vae.std]),
        "latent_scale": str(vae.scale),
    }
    return {
        "__key__": key,
        "latent.safetensors": save({"latent": latent.contiguous()}, metadata=meta),
        "text.safetensors": save(
            {"tokens": text_states.contiguous()},
            metadata={"caption": caption, "encoder": text_encoder},
        ),
    }


def _index_uri(out_uri: str) -> str:
    return out_uri[: -len(".tar")] + ".index.json"


def _captions_of(captions: str | None, clip_shard: str, storage: Storage) -> tuple[dict, str]:
    """({key: caption text}, digest of the caption shard) for one clip shard; the digest tells a
    rerun that a caption shard was rewritten (failed captions retried) since its latents were made."""
    if not captions:
        return {}, ""
    uri = sidecar_uri(captions, clip_shard, CAPTIONS)
    try:
        blob = storage.read_bytes(uri)
    except FileNotFoundError:
        return {}, "missing"
    chosen = {k: r["text"] for k, r in read_captions(uri, storage).items() if r["text"]}
    return chosen, hashlib.sha256(blob).hexdigest()


def encode_shard(
    clip_shard: str,
    output: str,
    vae_dir: str,
    text_path: str | None,
    cfg: dict[str, Any],
    storage_cfg: dict[str, Any],
    captions: str | None = None,
    selected: frozenset[str] | None = None,
) -> dict[str, Any]:
    """Ray task: one clip shard in (its `selected` clips, when given), one latent shard out.
    Skipped when already published from the same caption shard; its report (clips, errors,
    fallbacks) then comes from its index."""
    storage = Storage(StorageConfig(**storage_cfg))
    ecfg = EncodeConfig(**cfg)
    name = sidecar(clip_shard, LATENTS)
    out_uri = join(output, name)
    index_uri = _index_uri(out_uri)
    chosen, digest = _captions_of(captions, clip_shard, storage)
    if storage.exists(out_uri) and storage.exists(index_uri):
        index = read_index_file(storage, index_uri)
        if index.get("captions_sha256", "") == digest:
            return {**index, "shard": name, "clips": len(index["rows"]), "skipped": True}
        log.info("%s: its caption shard changed since it was encoded; encoding it again", name)
    torch.set_num_threads(1)
    vae, text = _models(vae_dir, text_path, ecfg.text_max_length)
    tag = vae_tag(vae_dir)
    fallbacks = 0
    errors: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []

    def samples() -> Any:
        nonlocal fallbacks
        for s in iter_samples(clip_shard, storage):
            if selected is not None and s["__key__"] not in selected:
                continue
            try:
                frames = decode_frames(s["mp4"], max_frames=ecfg.max_frames)
            except (av.error.FFmpegError, ValueError) as e:  # recorded and skipped, never fatal
                errors.append({"key": s["__key__"], "shard": clip_shard, "reason": f"decode: {e}"})
                continue
            t = latent_frames(frames.shape[0], ecfg.max_frames, vae.time_stride)
            x = to_signed(frames[:t])[None]
            x = crop_to_stride(x, vae.space_stride)
            z = vae.encode(x, ecfg.chunk_latent_frames, tile=ecfg.tile or None)[0].contiguous()
            caption = chosen.get(s["__key__"])
            if caption is None:  # no caption set, or this clip's caption failed: the source's
                caption = s.get("txt", b"").decode("utf-8")
                fallbacks += bool(captions)
            states = text.encode([caption])[0].contiguous()
            rows.append({"key": s["__key__"], "shape": list(z.shape), "text_len": len(states)})
            yield latent_record(s["__key__"], z, states, caption, tag, vae, t, text.path)

    write_samples(out_uri, samples(), storage)
    # The index lets the trainer plan packing without reading latents; written after the shard,
    # and a shard without one is redone (or scanned by the loader).
    report = {
        "rows": rows,
        "errors": errors,
        "fallbacks": fallbacks,
        "captions_sha256": digest,
        "vae": vae.identity,
    }
    storage.write_text(index_uri, json.dumps(report))
    return {**report, "shard": name, "clips": len(rows), "skipped": False}


def read_index_file(storage: Storage, uri: str) -> dict[str, Any]:
    """A latent shard's index: {"rows": [{key, shape, text_len}], "errors", "fallbacks",
    "captions_sha256"} (older indexes are a bare list of rows)."""
    data = json.loads(storage.read_text(uri))
    return {"rows": data} if isinstance(data, list) else data


def run_encode(
    shards: str,
    output: str,
    vae_dir: str,
    text_path: str | None,
    cfg: EncodeConfig,
    storage_cfg: StorageConfig,
    ray_address: str | None = None,
    captions: str | None = None,
    rerun: Rerun = RESUME,
) -> dict[str, Any]:
    """`captions`: a caption set (output of `spacetime recaption`) whose text replaces the source
    caption by key; clips it has no caption for keep their source caption (counted). A rerun
    resumes only with the same settings (else JobError, or start over with `rerun.overwrite`); raises
    JobError when no clip could be encoded."""
    t0 = time.monotonic()
    shards, output = normalize(shards), normalize(output)
    captions = normalize(captions) if captions else None
    storage = Storage(storage_cfg)
    clip_set = open_clips(shards, storage)
    vae_identity(vae_dir)  # fail fast, before any worker starts (a missing or unknown VAE)
    if rerun.overwrite:  # what this job writes, and only that
        for uri in storage.list(output):
            name = relative_to(output, uri)
            if (
                is_shard_name(name, LATENTS)
                or name.endswith(".index.json")
                or name in ("summary.json", "job.json")
            ):
                storage.delete(uri)
    check_or_record(
        storage,
        join(output, "job.json"),
        settings(shards, vae_dir, text_path, captions, cfg, storage) | selection_setting(clip_set),
        output,
        "--overwrite",
    )
    results = []
    with ray_session(ray_address, local_work_dir(output)):
        import ray  # Ray takes seconds to import; the tasks above do not need it

        task = ray.remote(num_cpus=1)(encode_shard)
        refs = [
            task.remote(
                s,
                output,
                vae_dir,
                text_path,
                dataclasses.asdict(cfg),
                dataclasses.asdict(storage_cfg),
                captions,
                clip_set.keys(s),
            )
            for s in clip_set.shards
        ]

        for ref in tqdm(refs, desc="encode", unit="shard"):
            results.append(ray.get(ref))
    summary = {
        "shards": len(results),
        "encoded_shards": sum(not r["skipped"] for r in results),
        "skipped_shards": sum(r["skipped"] for r in results),
        "clips": sum(r["clips"] for r in results),
        "captions": captions or "source",
        "caption_fallbacks": sum(r.get("fallbacks", 0) for r in results),
        "errors": [e for r in results for e in r.get("errors", [])],
        "vae": vae_tag(vae_dir),
        "wall_s": round(time.monotonic() - t0, 2),
    }
    s = summary
    return finish_job(
        storage,
        output,
        summary,
        log,
        f"encode: {s['shards']} shards ({s['encoded_shards']} encoded, {s['skipped_shards']} "
        f"already there), {s['clips']} clips, {len(s['errors'])} undecodable clips skipped, "
        f"captions: {s['captions']} ({s['caption_fallbacks']} fell back to the source caption), "
        f"{s['vae']}, {s['wall_s']:.1f}s",
        nothing=None
        if s["clips"]
        else f"encode: no clip could be encoded "
        f"({len(s['errors'])} failed); see {join(output, 'summary.json')}",
    )


def _safetensors_metadata(blob: bytes) -> dict[str, str]:
    header_len = int.from_bytes(blob[:8], "little")  # safetensors: u64 header size, JSON header
    return json.loads(blob[8 : 8 + header_len]).get("__metadata__", {})


def read_latents(shard: str, storage: Storage) -> dict[str, dict[str, Any]]:
    """{key: {"latent": (C, T', H', W'), "text": (L, D), "meta": {...}, "caption": str}}."""

    out = {}
    for s in iter_samples(shard, storage):
        lat, txt = s["latent.safetensors"], s["text.safetensors"]
        out[s["__key__"]] = {
            "latent": load(lat)["latent"],
            "text": load(txt)["tokens"],
            "meta": _safetensors_metadata(lat),
            "caption": _safetensors_metadata(txt).get("caption", ""),
        }
    return out
