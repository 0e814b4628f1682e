"""Process group and DeepSpeed engine setup, shared by every launcher (torchrun, the deepspeed
launcher, Ray Train, or a plain single process)."""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from infra.procs import LAUNCHER_PID, exit_when_gone, free_port
from trainer.config import TrainConfig
from trainer.lr_schedule import cosine_decay

log = logging.getLogger(__name__)


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device


@dataclass
class Mesh:
    """The world as DP x SP: rank r is in sequence-parallel group r // sp (consecutive ranks) at
    position r % sp, and in data-parallel position r // sp."""

    dp: int
    sp: int
    dp_rank: int
    sp_rank: int
    sp_group: Any
    """The process group of this rank's SP group (None when sp == 1)."""


def build_mesh(d: DistInfo, sp: int, heads: int) -> Mesh:
    """Collective (every rank creates every SP group, in the same order)."""
    if sp < 1 or d.world_size % sp:
        raise ValueError(
            f"the world size ({d.world_size}) must be a multiple of parallel.sequence ({sp})"
        )
    if heads % sp:
        raise ValueError(
            f"the model's {heads} attention heads must divide by parallel.sequence ({sp}): "
            "Ulysses gives each rank of a group heads / sequence heads"
        )
    group = None
    if sp > 1:
        for g in range(d.world_size // sp):
            pg = dist.new_group(list(range(g * sp, (g + 1) * sp)))
            if g == d.rank // sp:
                group = pg
    return Mesh(d.world_size // sp, sp, d.rank // sp, d.rank % sp, group)


def init_distributed(timeout_s: float = 600.0) -> DistInfo:
    """Joins the process group the launcher set up through the environment (RANK, WORLD_SIZE,
    MASTER_ADDR, ...); a plain `spacetime train` is a world of one on 127.0.0.1."""

    import deepspeed  # seconds to import; configs and dry runs need none of it

    if "TORCHELASTIC_RUN_ID" in os.environ:
        # A torchrun worker lives in a session of its own: if torchrun or `spacetime launch` is
        # SIGKILLed, nothing stops it. Follow them instead of training on alone.
        exit_when_gone(os.getppid(), "torchrun, this rank's launcher")
        if os.environ.get(LAUNCHER_PID, "").isdigit():
            exit_when_gone(int(os.environ[LAUNCHER_PID]), "spacetime launch")
    if "RANK" not in os.environ:
        os.environ.update(
            RANK="0",
            LOCAL_RANK="0",
            WORLD_SIZE="1",
            LOCAL_WORLD_SIZE="1",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(free_port()),
        )
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(gpu_for(local_rank, torch.cuda.device_count()))
    # DeepSpeed JIT-builds its shared-memory allreduce op when it first wraps the process group
    # (here, or in deepspeed.initialize where a launcher made the group: Ray Train does), for
    # tensor-parallel inference_all_reduce only: training never calls it. torch guards the build
    # with a bare lock file, so a rank killed inside it (a fail-fast peer, kill -9 at start-up) left
    # every later process on the machine waiting forever; it also cost a 23-80 s build on a fresh
    # machine (in every Ray-launched run until this was set outside the `if` below). Mark the op
    # unavailable and DeepSpeed skips it.
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    if not dist.is_initialized():
        deepspeed.init_distributed(
            dist_backend="nccl" if cuda else "gloo",
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device)


@contextlib.contextmanager
def distributed(timeout_s: float = 600.0) -> Iterator[DistInfo]:
    """init_distributed for a job that may run inside a longer-lived process (the demo, a test).
    The world of one it creates stays up (DeepSpeed caches its process groups, so a destroyed and
    re-created group breaks the next engine), but the launcher variables it set are removed on
    exit, so a later torchrun child does not inherit them."""
    created = "RANK" not in os.environ
    try:
        yield init_distributed(timeout_s)
    finally:
        if created:
            for k in (
                "RANK",
                "LOCAL_RANK",
                "WORLD_SIZE",
                "LOCAL_WORLD_SIZE",
                "MASTER_ADDR",
                "MASTER_PORT",
            ):
                os.environ.pop(k, None)


def sum_over_ranks(values: list[float], device: torch.device) -> list[float]:
    """Plain numbers summed over the world, reduced on the rank's device: NCCL reduces no CPU
    tensor (every GPU run of the DiT trainer failed at its first step on one)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def gpu_for(local_rank: int, visible: int) -> int:
    """The GPU of a launched rank: one per process. More processes on a node than visible GPUs
    would fail inside CUDA ("invalid device ordinal"); say what to change instead."""
    if local_rank >= visible:
        raise RuntimeError(
            f"local rank {local_rank} has no GPU of its own: {visible} visible on this node. "
            "Launch at most one process per GPU (--nproc-per-node), or hide the GPUs "
            "(CUDA_VISIBLE_DEVICES=) to train on the CPU with gloo"
        )
    return local_rank


def use_bf16(cfg: TrainConfig) -> bool:
    return cfg.precision == "bf16" or (cfg.precision == "auto" and torch.cuda.is_available())


def deepspeed_config(
    *,
    zero_stage: int,
    micro_batch: int,
    accumulation: int,
    world_size: int,
    grad_clip: float,
    bf16: bool,
    num_params: int,
    bucket: int = 0,
    offload_optimizer: bool = False,
    load_universal: bool = False,
) -> dict[str, Any]:
    """The DeepSpeed dict of both trainers, generated from their typed configs (never written by
    hand). ZeRO buckets are sized to the model (`bucket`, 0: a quarter of its parameters, between
    1M and DeepSpeed's 500M default): DeepSpeed allocates a flat buffer of that size per rank, and
    its fixed 500M default cost a small model 2 GB."""
    b = bucket or int(min(500_000_000, max(1_000_000, num_params // 4)))
    # ZeRO-1/2 assert the all-gather bucket is a multiple of 2 elements (4-byte starts for 16-bit
    # partitions, asserted in fp32 too): an odd quarter of the parameters (DiT-S with 1x1x1
    # patches) stopped the engine's start. Rounded up to 64 elements, a cache line of bf16.
    b = -(-b // 64) * 64
    zero: dict[str, Any] = {"stage": zero_stage}
    if zero_stage >= 1:
        zero |= {"reduce_bucket_size": b}
    if zero_stage in (1, 2):
        zero |= {"allgather_bucket_size": b}
    if zero_stage >= 2:
        zero |= {"overlap_comm": False, "contiguous_gradients": True}
    if zero_stage == 3:
        zero |= {
            "stage3_prefetch_bucket_size": b,
            "stage3_max_live_parameters": b,
            "stage3_max_reuse_distance": b,
            "stage3_param_persistence_threshold": 10_000,
        }
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": accumulation,
        "train_batch_size": micro_batch * accumulation * world_size,
        "gradient_clipping": grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
        "checkpoint": {"load_universal": load_universal},
    }


def dit_deepspeed_config(
    cfg: TrainConfig, world_size: int, num_params: int, load_universal: bool = False
) -> dict[str, Any]:
    """The DiT trainer's: micro-batches are packed token budgets, not fixed sample counts, so "1"
    is one packed micro-batch per rank per forward; a step accumulates G / DP of them (every rank
    of a sequence-parallel group runs the same ones). DeepSpeed sees every rank as data-parallel:
    it averages gradients and partitions ZeRO states over the whole world; the trainer scales the
    loss by SP, which makes that average a sum over each SP group and a mean over DP."""
    dp = world_size // cfg.parallel.sequence
    return deepspeed_config(
        zero_stage=cfg.zero_stage,
        micro_batch=1,
        accumulation=cfg.data.microbatches_per_step // dp,
        world_size=world_size,
        grad_clip=cfg.optim.grad_clip,
        bf16=use_bf16(cfg),
        num_params=num_params,
        bucket=cfg.bucket_elements,
        offload_optimizer=cfg.offload_optimizer,
        load_universal=load_universal,
    )


def lr_lambda(cfg: TrainConfig) -> Any:
    o = cfg.optim

    def shape(step: int) -> float:
        if o.warmup_steps and step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        if o.schedule == "constant":
            return 1.0
        span = max(1, cfg.steps - o.warmup_steps)
        return cosine_decay((step - o.warmup_steps) / span, o.min_lr_ratio)

    def f(step: int) -> float:  # a stage's own peak learning rate scales the schedule
        return shape(step) * cfg.peak_lr(step) / o.lr

    return f


def build_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    kw = dict(
        lr=cfg.optim.lr,
        betas=cfg.optim.betas,
        eps=cfg.optim.eps,
        weight_decay=cfg.optim.weight_decay,
    )
    if cfg.optim.name == "muon":
        from trainer.muon import MuonAdamW

        return MuonAdamW(model, momentum=cfg.optim.muon_momentum, **kw)  # type: ignore[arg-type]
    if cfg.offload_optimizer:
        # ZeRO-Offload needs DeepSpeed's CPU Adam (JIT-built; resume not bit-exact, see PLATFORM.md).
        from deepspeed.ops.adam import (
            DeepSpeedCPUAdam,
        )  # JIT-builds a C++ op; only offload needs it

        return DeepSpeedCPUAdam(params, adamw_mode=True, **kw)
    # torch's AdamW: resume is bit-exact with it (DeepSpeed's C++ Adam recomputes beta^t on restore).
    # Fused: one kernel per tensor, no temporaries; the for-loop form allocated two more copies of
    # ZeRO's flat optimizer partition during every step (bench/sequence_parallel.py).
    return torch.optim.AdamW(params, **kw, fused=True)


def measure_peak_tflops(device: torch.device, bf16: bool, seconds: float = 1.0) -> float:
    """Achieved TFLOP/s of a large matmul on this device: the MFU denominator on CPU."""

    n = 2048
    dtype = torch.bfloat16 if bf16 else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    iters, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        iters += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * iters / (time.perf_counter() - t0) / 1e12


def lost_peer_message(e: BaseException, rank: int, step: int) -> str | None:
    """A readable account of a collective that failed because a peer went away (gloo and NCCL
    report it as a connection error naming the peer's address), or None for other errors."""
    text = str(e)
    markers = (
        "Connection closed by peer",
        "Connection reset by peer",
        "Broken pipe",
        "Connection refused",
        "NCCL communicator was aborted",
        "remote process exited",
    )
    if not any(m in text for m in markers):
        return None
    peers = sorted(set(re.findall(r"\[([0-9A-Fa-f.:]+)\]:\d+", text)))
    who = f"the node at {', '.join(peers)}" if peers else "a peer"
    return (
        f"rank {rank} lost contact with {who} during step {step + 1}: that node died or the "
        f"network to it failed ({text.splitlines()[0][:300]}). Relaunch every node with "
        "--resume auto (or use spacetime launch --max-restarts N) to continue from the latest "
        "checkpoint."
    )
