"""Process group and DeepSpeed engine setup, shared by every launcher (torchrun, the deepspeed
launcher, Ray Train, or a plain single process)."""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from infra.procs import LAUNCHER_PID, exit_when_gone, free_port
from trainer.config import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device


def init_distributed(timeout_s: float = 600.0) -> DistInfo:
    """Joins the process group the launcher set up through the environment (RANK, WORLD_SIZE,
    MASTER_ADDR, ...); a plain `spacetime train` is a world of one on 127.0.0.1."""
    import datetime

    import deepspeed

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
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        # DeepSpeed JIT-builds its shared-memory allreduce op here, before joining the group, for
        # tensor-parallel inference_all_reduce only: training never calls it. torch guards the
        # build with a bare lock file, so a rank killed inside it (a fail-fast peer, kill -9 at
        # start-up) left every later process on the machine waiting forever; it also cost a
        # 23-56 s build on a fresh machine. Mark the op unavailable and DeepSpeed skips it.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
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


def use_bf16(cfg: TrainConfig) -> bool:
    return cfg.precision == "bf16" or (cfg.precision == "auto" and torch.cuda.is_available())


def bucket_elements(cfg: TrainConfig, num_params: int) -> int:
    if cfg.bucket_elements:
        return cfg.bucket_elements
    return int(min(500_000_000, max(1_000_000, num_params // 4)))


def deepspeed_config(
    cfg: TrainConfig, world_size: int, num_params: int, load_universal: bool = False
) -> dict[str, Any]:
    """The DeepSpeed dict, generated from the typed config."""
    gas = cfg.data.microbatches_per_step // world_size
    zero: dict[str, Any] = {"stage": cfg.zero_stage}
    b = bucket_elements(cfg, num_params)
    if cfg.zero_stage >= 1:
        zero |= {"reduce_bucket_size": b}
    if cfg.zero_stage in (1, 2):
        zero |= {"allgather_bucket_size": b}
    if cfg.zero_stage >= 2:
        zero |= {"overlap_comm": False, "contiguous_gradients": True}
    if cfg.zero_stage == 3:
        zero |= {
            "stage3_prefetch_bucket_size": b,
            "stage3_max_live_parameters": b,
            "stage3_max_reuse_distance": b,
            "stage3_param_persistence_threshold": 10_000,
        }
    if cfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    return {
        # Micro-batches are packed token budgets, not fixed sample counts: "1" here means one packed
        # micro-batch per rank per forward.
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": gas,
        "train_batch_size": gas * world_size,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": use_bf16(cfg)},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
        "checkpoint": {"load_universal": load_universal},
    }


def lr_lambda(cfg: TrainConfig) -> Any:
    o = cfg.optim

    def f(step: int) -> float:
        if o.warmup_steps and step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        if o.schedule == "constant":
            return 1.0
        span = max(1, cfg.steps - o.warmup_steps)
        progress = min(1.0, (step - o.warmup_steps) / span)
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def build_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    kw = dict(
        lr=cfg.optim.lr,
        betas=cfg.optim.betas,
        eps=cfg.optim.eps,
        weight_decay=cfg.optim.weight_decay,
    )
    if cfg.offload_optimizer:
        # ZeRO-Offload needs DeepSpeed's CPU Adam (JIT-built; resume not bit-exact, see PLATFORM.md).
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(params, adamw_mode=True, **kw)
    # torch's AdamW: resume is bit-exact with it (DeepSpeed's C++ Adam recomputes beta^t on restore).
    return torch.optim.AdamW(params, **kw)


def measure_peak_tflops(device: torch.device, bf16: bool, seconds: float = 1.0) -> float:
    """Achieved TFLOP/s of a large matmul on this device: the MFU denominator on CPU."""
    import time

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
