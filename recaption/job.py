"""`spacetime recaption`: caption every clip of a shard set with a pool of captioner actors.

Each actor loads its captioner once (one per GPU, or per CPU worker) and captions whole clip shards
in batches; each clip shard gives one sidecar `captions-NNNNNN.tar` of `{key}.caption.json`,
published atomically, so a rerun after kill -9 redoes only the shards that were not published:
nothing is lost and nothing is duplicated. A clip that fails (undecodable, degenerate output, a
prompt that does not fit the model) gets a record with `text: null` and the reason; the trainer
then falls back to the source caption. Video shards are never rewritten.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from infra.host_heap import retain_freed_memory
from infra.provenance import RESUME, Rerun, check_or_record, finish_job
from infra.ray_cluster import local_work_dir, ray_session
from infra.shards import (
    CAPTIONS,
    SELECTION,
    is_shard_name,
    iter_samples,
    open_clips,
    read_captions,
    selection_setting,
    sidecar,
    write_samples,
)
from infra.storage import Storage
from infra.storage_config import StorageConfig
from infra.uris import join, normalize, relative_to
from recaption.config import RecaptionConfig
from recaption.frames import sample_frames
from recaption.prompts import get_prompt
from recaption.validate import problem

log = logging.getLogger(__name__)


def make_captioner(cfg: RecaptionConfig) -> Any:
    if cfg.backend == "stats":
        from recaption.stats import StatsCaptioner

        return StatsCaptioner()
    if cfg.backend == "hf":
        from recaption.hf import (
            HFCaptioner,
        )  # backends import transformers/vLLM: only the one asked for

        return HFCaptioner(cfg)
    if cfg.backend == "vllm":
        from recaption.vllm_backend import VLLMCaptioner

        return VLLMCaptioner(cfg)
    raise ValueError(f"unknown backend {cfg.backend!r}")


def caption_shard_name(clip_shard: str) -> str:
    return sidecar(clip_shard, CAPTIONS)


_OUTPUT_FILES = ("index.parquet", "summary.json", "job.json")


def settings(shards: str, cfg: RecaptionConfig) -> dict[str, Any]:
    """What a caption set is made from; batch size, workers and retries change none of it."""
    model = ""
    if cfg.model:
        conf = Path(cfg.model) / "config.json"
        digest = hashlib.sha256(conf.read_bytes()).hexdigest()[:12] if conf.is_file() else ""
        model = f"{normalize(cfg.model)} (config {digest})"
    prompt = get_prompt(cfg.prompt)
    return {
        "shards": normalize(shards),
        "backend": cfg.backend,
        "model": model,
        "prompt": prompt.name,
        "prompt_version": prompt.version,
        "frames": cfg.frames,
        "max_side": cfg.max_side,
        "max_new_tokens": cfg.max_new_tokens,
        "temperature": cfg.temperature,
        "dtype": cfg.dtype,
    }


class CaptionWorker:
    """Ray actor body: one captioner, loaded once, captioning whole shards."""

    def __init__(self, cfg: dict[str, Any], storage_cfg: dict[str, Any]):

        torch.set_num_threads(1)
        # On CPU each generate step allocates and frees vocabulary-sized logits: reused from the
        # heap they cost no page faults (batch 32-64: ~10% more clips/s, BENCHMARKS.md).
        retain_freed_memory()
        self.cfg = RecaptionConfig(**cfg)
        self.storage = Storage(StorageConfig(**storage_cfg))
        self.prompt = get_prompt(self.cfg.prompt)
        self.captioner = make_captioner(self.cfg)
        # None for stats (no model) and vllm (which resolves its own dtype)
        self.dtype = getattr(self.captioner, "dtype_name", None)

    def _caption_batch(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Captions a batch with retries; a batch that keeps failing is split into single rows so
        one bad clip costs only its own caption."""
        last = None
        for _ in range(self.cfg.retries + 1):
            try:
                return self.captioner.caption(items)
            except Exception as e:  # any backend failure: retried, then recorded per row
                last = e
        if len(items) == 1:
            return [{"text": None, "error": f"{type(last).__name__}: {last}"}]
        return [r for it in items for r in self._caption_batch([it])]

    def run_shard(
        self,
        clip_shard: str,
        out_uri: str,
        scenes: dict[str, int],
        retry: bool = False,
        selected: frozenset[str] | None = None,
    ) -> dict[str, Any]:
        """Captions one clip shard into its caption shard (only the `selected` clips, when given).
        With `retry`, only the clips whose caption failed in the published caption shard are
        captioned again; the others are kept."""

        kept = (
            {k: r for k, r in read_captions(out_uri, self.storage).items() if r["text"]}
            if retry
            else {}
        )
        records: list[dict[str, Any]] = list(kept.values())
        pending: list[dict[str, Any]] = []

        def flush() -> None:
            if not pending:
                return
            t0 = time.monotonic()
            results = self._caption_batch(pending)
            per_clip = (time.monotonic() - t0) / len(pending)
            for it, res in zip(pending, results, strict=True):
                text = res.get("text")
                error = res.get("error")
                if text is not None and error is None:
                    error = problem(text, self.prompt.text if self.cfg.backend != "stats" else "")
                    if error:
                        text = None
                rec = it["record"] | {"text": text, "error": error, "seconds": round(per_clip, 4)}
                if "facts" in res:
                    rec["facts"] = res["facts"]
                records.append(rec)
            pending.clear()

        keys: list[str] = []
        for s in iter_samples(clip_shard, self.storage):
            if selected is not None and s["__key__"] not in selected:
                continue
            keys.append(s["__key__"])
            if s["__key__"] in kept:
                continue
            meta = json.loads(s.get("json", b"{}"))
            source_caption = s.get("txt", b"").decode("utf-8")
            record = {
                "key": s["__key__"],
                "backend": self.captioner.backend,
                "model": self.captioner.model_id,
                "prompt": self.prompt.name,
                "prompt_version": self.prompt.version,
                # `dtype: auto` resolves per actor (bf16 where the CPU or GPU computes it), so each
                # caption records what it was made in.
                "dtype": self.dtype,
                "source_caption": source_caption,
            }
            try:
                frames, times, info = sample_frames(s["mp4"], self.cfg.frames, self.cfg.max_side)
            except Exception as e:  # a broken clip is recorded, never fatal to the shard
                records.append(record | {"text": None, "error": f"decode: {e}", "frames": []})
                continue
            info |= {k: meta[k] for k in ("width", "height") if k in meta}
            record["frames"] = times
            pending.append(
                {
                    "record": record,
                    "frames": frames,
                    "times": times,
                    "info": info,
                    "source_caption": source_caption,
                    "scene": int(meta.get("scene", 0)),
                    "source_has_cuts": scenes.get(meta.get("source", ""), 1) > 1,
                }
            )
            if len(pending) >= self.cfg.batch_size:
                flush()
        flush()
        order = {k: i for i, k in enumerate(keys)}
        records.sort(key=lambda r: order[r["key"]])  # the clip shard's order (failures come early)
        write_samples(
            out_uri,
            (
                {"__key__": r["key"], "caption.json": json.dumps(r, sort_keys=True).encode()}
                for r in records
            ),
            self.storage,
        )
        return {"shard": out_uri.rsplit("/", 1)[-1], "records": _index_rows(records, out_uri)}


def _index_rows(records: list[dict[str, Any]], shard: str) -> list[dict[str, Any]]:
    return [
        {
            "key": r["key"],
            "shard": shard.rsplit("/", 1)[-1],
            "backend": r["backend"],
            "model": r["model"],
            "prompt": r["prompt"],
            "prompt_version": r["prompt_version"],
            "chars": len(r["text"] or ""),
            "error": r["error"],
        }
        for r in records
    ]


def source_scene_counts(shards: str, storage: Storage) -> dict[str, int]:
    """Scenes per source video (at least: highest scene index with a kept clip, plus one)."""
    uri = join(shards, "manifest.parquet")
    if not storage.exists(uri):
        uri = join(shards, SELECTION)  # a curated selection carries the manifest's columns
    if not storage.exists(uri):
        return {}

    try:
        rows = pq.read_table(
            io.BytesIO(storage.read_bytes(uri)), columns=["source", "scene"]
        ).to_pylist()
    except (OSError, ValueError, KeyError) as e:  # pyarrow: damaged file or missing columns
        raise ValueError(f"{uri}: cannot read source and scene from the manifest ({e})") from None
    scenes: dict[str, int] = {}
    for r in rows:
        scenes[r["source"]] = max(scenes.get(r["source"], 0), int(r["scene"]) + 1)
    return scenes


def run_recaption(
    shards: str,
    output: str,
    cfg: RecaptionConfig,
    storage_cfg: StorageConfig,
    ray_address: str | None = None,
    rerun: Rerun = RESUME,
) -> dict[str, Any]:
    """Captions every clip shard of `shards` into the caption set `output`. A rerun resumes:
    published caption shards are kept, and those with failed captions are captioned again (only
    their failed clips) unless `rerun.retry_failed` is off. Raises JobError when no clip got a caption."""

    t0 = time.monotonic()
    shards, output = normalize(shards), normalize(output)
    storage = Storage(storage_cfg)
    prompt = get_prompt(cfg.prompt)
    clip_set = open_clips(shards, storage)
    clip_shards = clip_set.shards
    if cfg.backend == "hf":
        from recaption.hf import check_model_dir

        check_model_dir(cfg.model)  # fail fast, before any actor starts
    elif cfg.backend == "vllm":
        from recaption.vllm_backend import check_vllm

        check_vllm()
    if rerun.overwrite:  # what this job writes, and only that
        for uri in storage.list(output):
            name = relative_to(output, uri)
            if is_shard_name(name, CAPTIONS) or name in _OUTPUT_FILES:
                storage.delete(uri)
    check_or_record(
        storage,
        join(output, "job.json"),
        settings(shards, cfg) | selection_setting(clip_set),
        output,
        "--overwrite",
    )
    scenes = source_scene_counts(shards, storage)
    done: dict[str, list[dict[str, Any]]] = {}  # caption shard name -> index rows
    todo: list[tuple[str, bool]] = []  # (clip shard, retry)
    for s in clip_shards:
        name = caption_shard_name(s)
        if not storage.exists(join(output, name)):
            todo.append((s, False))
            continue
        rows = _index_rows(list(read_captions(join(output, name), storage).values()), name)
        if rerun.retry_failed and any(r["error"] for r in rows):
            todo.append((s, True))
        else:
            done[name] = rows
    retried = sum(r for _, r in todo)
    rows: list[dict[str, Any]] = [r for shard_rows in done.values() for r in shard_rows]
    if todo:
        with ray_session(ray_address, local_work_dir(output)):
            import ray  # Ray takes seconds to import; actors get it from Ray anyway
            from ray.util import ActorPool

            gpus = int(ray.cluster_resources().get("GPU", 0))
            cpus = int(ray.cluster_resources().get("CPU", 1))
            n = cfg.workers or (gpus if gpus and cfg.backend != "stats" else cpus)
            n = max(1, min(n, len(todo)))
            res = {"num_gpus": 1} if gpus and cfg.backend != "stats" else {"num_cpus": 1}
            actor = ray.remote(**res)(CaptionWorker)  # type: ignore[call-overload]
            pool = ActorPool(
                [
                    actor.remote(dataclasses.asdict(cfg), dataclasses.asdict(storage_cfg))
                    for _ in range(n)
                ]
            )
            results = pool.map_unordered(
                lambda a, j: a.run_shard.remote(
                    j[0], join(output, caption_shard_name(j[0])), scenes, j[1], clip_set.keys(j[0])
                ),
                todo,
            )
            for r in tqdm(
                results, total=len(todo), desc=f"recaption ({cfg.backend})", unit="shard"
            ):
                rows += r["records"]
    rows.sort(key=lambda r: (r["shard"], r["key"]))
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    storage.write_bytes(join(output, "index.parquet"), buf.getvalue())
    failed = [r for r in rows if r["error"]]
    summary = {
        "clips": len(rows),
        "captioned": len(rows) - len(failed),
        "failed": len(failed),
        "shards": len(clip_shards),
        "captioned_shards": len(todo) - retried,
        "retried_shards": retried,
        "skipped_shards": len(done),
        "backend": cfg.backend,
        "model": cfg.model or cfg.backend,
        "prompt": f"{prompt.name}-v{prompt.version}",
        "errors": sorted({(r["error"] or "").split(":")[0] for r in failed}),
        "wall_s": round(time.monotonic() - t0, 2),
    }
    s = summary
    return finish_job(
        storage,
        output,
        summary,
        log,
        f"recaption: {s['clips']} clips in {s['shards']} shards ({s['captioned_shards']} "
        f"captioned now, {retried} retried, {s['skipped_shards']} already done), {s['captioned']} "
        f"captioned, {s['failed']} failed, backend {cfg.backend}, prompt {s['prompt']}, "
        f"{s['wall_s']:.1f}s",
        nothing=f"recaption: every one of {len(rows)} clips failed ({', '.join(s['errors'])}); "
        f"see {join(output, 'index.parquet')}"
        if rows and not s["captioned"]
        else None,
    )
