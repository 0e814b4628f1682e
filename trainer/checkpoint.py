"""Training checkpoints: DeepSpeed engine state plus everything else a resume needs, published atomically.

Layout under `{run}/checkpoints/`:

    step-00000100/      DeepSpeed's files (model states, ZeRO optimizer partitions, LR scheduler),
                        trainer_state.json (step, data position, tokens seen, world size, resolved
                        config, code version), rng-rank00000.pt per rank, ema.safetensors
    latest              the name of the newest complete checkpoint, written last

Everything is written under `step-N.partial-<id>/`; after every rank has finished, rank 0 renames
it to `step-N/` and then rewrites `latest`. A crash at any point leaves the previous `latest`
pointing at a complete checkpoint; a leftover `.partial-*` directory is never read and is removed by
the next save of that step. On S3 the same order holds: the files are uploaded, then `latest` is uploaded last.

A different world size at resume: DeepSpeed's ZeRO checkpoints are partitioned by rank, so the
checkpoint is first converted to DeepSpeed's universal format (deepspeed.checkpoint.ds_to_universal)
and loaded with `load_universal`. Weights, optimizer moments, LR schedule, EMA and the data position
carry over; per-rank RNG states of ranks that no longer exist are dropped (the trainer seeds all
randomness from (seed, step, micro-batch), so this does not change the math).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import uuid
from datetime import timedelta
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from infra.errors import JobError
from infra.provenance import differences, flatten
from infra.storage import Storage
from infra.uris import is_s3, join, relative_to, safe_relpath

log = logging.getLogger(__name__)

LATEST = "latest"
PARTIAL = ".partial"


def tag_for(step: int) -> str:
    return f"step-{step:08d}"


@functools.cache  # a git subprocess: once per process, not in every save's snapshot
def code_version() -> str:
    try:
        here = Path(__file__).resolve().parent.parent
        out = subprocess.run(
            ["git", "-C", str(here), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if out.returncode == 0:
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return f"spacetime-dit {version('spacetime-dit')}"


class CheckpointStore:
    """Where checkpoints live: `local_dir` always (DeepSpeed writes files), mirrored to `remote`
    (an s3:// prefix) when the run's output is on S3."""

    def __init__(
        self,
        local_dir: Path,
        remote: str | None,
        storage: Storage,
        rank: int,
        timeout_s: float = 3 * 3600,
    ):
        """`timeout_s`: how long ranks wait for each other around a save (an S3 upload can take
        far longer than a training collective should be allowed to)."""
        self.local, self.remote, self.storage, self.rank = local_dir, remote, storage, rank
        self.timeout_s = timeout_s
        self._group: Any = None

    def _barrier(self) -> None:
        """A barrier on a gloo group of its own with `timeout_s`: while one rank per node uploads,
        the others wait here, not in a collective bound by the training timeout. Created on first
        use, which every rank reaches in the same order (saves and resumes are collective)."""
        if self._group is None:
            self._group = dist.new_group(backend="gloo", timeout=timedelta(seconds=self.timeout_s))
        dist.barrier(group=self._group)

    @classmethod
    def reader(cls, checkpoints: str | Path, storage: Storage | None = None) -> CheckpointStore:
        """A store to read a local checkpoints folder (sample, export, the demo): no process
        group, nothing written."""
        return cls(Path(checkpoints), None, storage or Storage(), rank=0)

    def state(self, tag: str) -> dict[str, Any]:
        """The trainer state of checkpoint `tag` (step, history, config, ...)."""
        return read_state(self.local / tag)

    def export(self, tag: str, out_dir: Path) -> Path:
        """Consolidated fp32 weights of checkpoint `tag` (export_weights)."""
        return export_weights(self.local, tag, out_dir)

    def latest(self) -> str | None:
        if self.remote:
            uri = join(self.remote, LATEST)
            return self.storage.read_text(uri).strip() if self.storage.exists(uri) else None
        p = self.local / LATEST
        return p.read_text().strip() if p.exists() else None

    def all_tags(self) -> list[str]:
        if self.remote:
            names = {
                u[len(self.remote) :].lstrip("/").split("/", 1)[0]
                for u in self.storage.list(self.remote)
            }
        else:
            dirs = self.local.iterdir() if self.local.is_dir() else []
            names = {p.name for p in dirs if p.is_dir()}
        return sorted(n for n in names if n.startswith("step-") and "." not in n)

    def resume_tag(self, resume: str | None) -> str | None:
        """The checkpoint to resume from: None for a fresh run (refused when checkpoints exist, so
        a run is never silently overwritten), `latest` for "auto", else the named tag."""
        latest = self.latest()
        if resume is None:
            if latest is not None:
                raise JobError(
                    f"{self.remote or self.local}: holds checkpoints (latest {latest}); "
                    "pass --resume auto to continue, or write to another run directory"
                )
            return None
        if resume == "auto":
            return latest
        return Path(resume).name

    def prepare_resume(
        self, tag: str, world_size: int, zero_stage: int, local_rank: int
    ) -> tuple[Path, dict[str, Any], str, bool]:
        """Fetches checkpoint `tag` and, when it was written by another world size under ZeRO,
        converts it to the universal format. Returns (its directory, the trainer state, the tag
        DeepSpeed should load, whether that tag is universal). Collective."""
        path = self.fetch(tag, local_rank)
        state = read_state(path)
        universal = state["world_size"] != world_size and zero_stage > 0
        if universal:
            if local_rank == 0:
                log.info(
                    "world size %d -> %d: converting %s to a universal checkpoint",
                    state["world_size"],
                    world_size,
                    tag,
                )
                to_universal(self.local, tag)
            self._barrier()
            tag = tag + "-universal"
        return path, state, tag, universal

    def write_engine(
        self, engine: Any, tag: str, local_rank: int, adapters_only: bool = False
    ) -> Path:
        """Every rank writes its part of DeepSpeed's state for `tag` (with the client state a later
        universal conversion needs) under a fresh `tag.partial-<id>/`, the id drawn by rank 0 and
        shared: a save never writes into what a crashed one left, and nodes that share a folder
        (a shared filesystem) never clear each other's files. Returns that directory. Collective;
        `publish` makes it the latest. `adapters_only` (LoRA): frozen weights are left out."""
        self.local.mkdir(parents=True, exist_ok=True)
        ids = [uuid.uuid4().hex[:8] if self.rank == 0 else ""]
        self._barrier()
        dist.broadcast_object_list(ids, src=0, group=self._group)
        partial = f"{tag}{PARTIAL}-{ids[0]}"
        if local_rank == 0:  # leftovers of crashed saves of this tag, in this node's folder
            for stale in self.local.glob(f"{tag}{PARTIAL}*"):
                if stale.name != partial:
                    shutil.rmtree(stale, ignore_errors=True)
        self._barrier()
        engine.save_checkpoint(
            str(self.local),
            tag=partial,
            save_latest=False,
            client_state={"universal_checkpoint_info": {}},
            exclude_frozen_parameters=adapters_only,
        )
        return self.local / partial

    def publish(self, partial: Path, keep: int, local_rank: int) -> None:
        """After every rank wrote `partial` (from `write_engine`): make it its tag, then point
        `latest` at it. Collective (every rank calls it)."""
        tag = partial.name.split(PARTIAL)[0]
        self._barrier()
        if self.remote:
            if local_rank == 0:  # each node uploads what its ranks wrote
                for f in sorted(partial.rglob("*")):
                    if f.is_file():
                        rel = str(f.relative_to(partial))
                        self.storage.upload(f, join(self.remote, tag, rel))
            self._barrier()
            if self.rank == 0:
                self.storage.write_text(join(self.remote, LATEST), tag)
            if local_rank == 0:  # this node's part only; `fetch` completes it from S3 if needed
                _promote(partial, self.local / tag)
        elif self.rank == 0:
            _promote(partial, self.local / tag)
            tmp = self.local / (LATEST + PARTIAL)
            tmp.write_text(tag)
            os.replace(tmp, self.local / LATEST)
        self._barrier()
        if keep > 0:
            if self.rank == 0 and self.remote:
                for old in self.all_tags()[:-keep]:
                    self.storage.delete_prefix(join(self.remote, old) + "/")
                    log.info("checkpoint %s removed (keep-last-N)", old)
            if local_rank == 0:  # every node's own cache, not only node 0's
                for old in self._local_tags()[:-keep]:
                    shutil.rmtree(self.local / old, ignore_errors=True)
                    if not self.remote:
                        log.info("checkpoint %s removed (keep-last-N)", old)

    def _local_tags(self) -> list[str]:
        if not self.local.is_dir():
            return []
        names = {p.name.removesuffix("-universal") for p in self.local.iterdir() if p.is_dir()}
        tags = sorted(n for n in names if n.startswith("step-") and "." not in n)
        # A universal copy goes with the checkpoint it was converted from.
        return [t for tag in tags for t in (tag, tag + "-universal") if (self.local / t).is_dir()]

    def fetch(self, tag: str, local_rank: int) -> Path:
        """The local directory of checkpoint `tag`, whole. For an S3 run each node's first rank
        downloads what its cache lacks: a node's cache holds only the files its own ranks wrote,
        which is not a checkpoint another world size can be converted from."""
        path = self.local / tag
        if self.remote and local_rank == 0:
            prefix = join(self.remote, tag)
            for entry in self.storage.list_entries(prefix):
                rel = safe_relpath(relative_to(prefix, entry.uri), prefix)
                local = path / rel
                if not local.is_file() or local.stat().st_size != entry.size:
                    self.storage.download(entry.uri, local)
        self._barrier()
        read_state(path)  # a clear error when it is not a whole checkpoint
        return path


def _promote(partial: Path, dst: Path) -> None:
    """Renames a written checkpoint to its tag, replacing an older save of the same tag (a run
    resumed from an earlier step saves it again). Nodes sharing the folder may race here: the
    first rename wins, the others find their work done."""
    if dst.exists():
        old = dst.with_name(f"{dst.name}.replaced-{uuid.uuid4().hex[:8]}")
        with contextlib.suppress(FileNotFoundError):
            os.replace(dst, old)
        shutil.rmtree(old, ignore_errors=True)
    try:
        os.replace(partial, dst)
    except OSError:
        if not dst.is_dir():
            raise


def read_state(path: Path) -> dict[str, Any]:
    f = path / "trainer_state.json"
    try:
        return json.loads(f.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path}: not a complete checkpoint (no trainer_state.json)"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise JobError(f"{f}: unreadable ({e}); the checkpoint is damaged") from None


def check_resume(
    then: dict[str, Any], now: dict[str, Any], fixed: tuple[str, ...], tag: str
) -> None:
    """Refuses to resume when a setting that decides the data order, the noise or the model
    (`fixed`: dotted names or prefixes ending in '.') differs from the checkpoint's: the resumed
    run would skip or repeat samples, or train another model, while looking like a continuation."""

    def pick(d: dict[str, Any]) -> dict[str, Any]:
        return {
            k: v
            for k, v in flatten(d).items()
            if any(k == f or (f.endswith(".") and k.startswith(f)) for f in fixed)
        }

    diff = differences(pick(then), pick(now))
    if diff:
        raise JobError(
            f"{tag}: cannot resume with other settings ({'; '.join(diff)}): they decide which "
            "samples, noise or model each step sees. Set them back, or start a new run under "
            "another run name or output folder."
        )


def write_state(path: Path, state: dict[str, Any]) -> None:
    (path / "trainer_state.json").write_text(json.dumps(state, indent=2))


def to_universal(ckpt_dir: Path, tag: str) -> str:
    """Converts checkpoint `tag` to DeepSpeed's universal format (once) and returns its tag."""
    out_tag = tag + "-universal"
    out = ckpt_dir / out_tag
    if not (out / "zero").is_dir():
        tmp = ckpt_dir / (out_tag + PARTIAL)
        shutil.rmtree(tmp, ignore_errors=True)
        cmd = [
            sys.executable,
            "-m",
            "deepspeed.checkpoint.ds_to_universal",
            "--input_folder",
            str(ckpt_dir / tag),
            "--output_folder",
            str(tmp),
            "--num_extract_workers",
            "1",
            "--num_merge_workers",
            "1",
        ]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(
                f"{ckpt_dir / tag}: conversion to a universal checkpoint failed:\n{res.stderr[-2000:]}"
            )
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
        # trainer files travel with it so the universal tag is a complete checkpoint too
        for f in (ckpt_dir / tag).glob("*"):
            if f.is_file() and (f.name.endswith(".json") or f.name.endswith(".safetensors")):
                shutil.copy2(f, out / f.name)
    return out_tag


def fp32_weights(ckpt_dir: Path, tag: str) -> dict[str, torch.Tensor]:
    """The model's fp32 weights in checkpoint `tag`, gathered from its ZeRO partitions. ZeRO-0
    writes no partitions (the whole module sits in its model-states file), and DeepSpeed's
    zero_to_fp32 fails on such a checkpoint: read the module there."""
    if not any((ckpt_dir / tag).glob("*optim_states.pt")):
        states = torch.load(  # our own checkpoint: DeepSpeed pickles more than tensors into it
            ckpt_dir / tag / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False
        )
        return {k: v.float() for k, v in states["module"].items()}
    # deepspeed imports in seconds and only consolidation needs it.
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)


def export_weights(ckpt_dir: Path, tag: str, out_dir: Path) -> Path:
    """Consolidated fp32 weights (model.safetensors, and ema.safetensors when present) plus the
    model config, loadable without DeepSpeed (trainer.sample)."""
    state = read_state(ckpt_dir / tag)
    sd = fp32_weights(ckpt_dir, tag)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(out_dir / "model.safetensors"))
    if (ckpt_dir / tag / "ema.safetensors").exists():
        shutil.copy2(ckpt_dir / tag / "ema.safetensors", out_dir / "ema.safetensors")
    (out_dir / "config.json").write_text(json.dumps(state["config"], indent=2))
    if state.get("lora_base"):  # adapters only: where their base is, and its digest
        (out_dir / "lora_base.json").write_text(json.dumps(state["lora_base"], indent=2))
    return out_dir


def local_run_dir(output_dir: str, name: str, cache_dir: str) -> Path:
    """Local files of the run: the run dir itself, or a folder of the cache for S3 runs."""
    if is_s3(output_dir):
        # A readable name plus a digest of the whole URI: s3://b/a_b and s3://b/a/b must not
        # share a cache folder.
        uri = join(output_dir, name)
        readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", uri.removeprefix("s3://"))[-80:]
        return (
            Path(cache_dir) / "runs" / f"{readable}-{hashlib.sha1(uri.encode()).hexdigest()[:10]}"
        )
    return Path(output_dir) / name
