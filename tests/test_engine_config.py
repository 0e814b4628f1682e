"""The engine's settings: DeepSpeed buckets any model size passes, one GPU per launched rank, and
no JIT build of an op training never calls."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from trainer.engine import deepspeed_config, gpu_for


@pytest.mark.parametrize("stage", [1, 2, 3])
@pytest.mark.parametrize(("num_params", "bucket"), [(10_000_006, 0), (4_000_000, 1_000_001)])
def test_buckets_are_aligned_for_any_parameter_count(
    stage: int, num_params: int, bucket: int
) -> None:
    # 10,000,006 // 4 is odd: DeepSpeed's ZeRO-1/2 optimizer asserted on it (seen on a GPU run).
    cfg = deepspeed_config(
        zero_stage=stage, micro_batch=1, accumulation=1, world_size=1, grad_clip=1.0,
        bf16=False, num_params=num_params, bucket=bucket,
    )  # fmt: skip
    zero = cfg["zero_optimization"]
    sizes = [v for k, v in zero.items() if "bucket_size" in k or k.startswith("stage3_max")]
    assert sizes and all(v % 64 == 0 for v in sizes)
    assert all(v >= (bucket or num_params // 4) for v in sizes)  # rounded up, never down


def test_a_rank_without_a_gpu_of_its_own_is_told_what_to_change() -> None:
    assert gpu_for(0, 1) == 0 and gpu_for(3, 8) == 3
    with pytest.raises(RuntimeError, match=r"local rank 1 has no GPU of its own: 1 visible.*"
                       r"--nproc-per-node.*CUDA_VISIBLE_DEVICES="):  # fmt: skip
        gpu_for(1, 1)


def test_no_shm_op_build_where_a_launcher_made_the_process_group(tmp_path: Path) -> None:
    """Ray Train sets up the process group before spacetime's code runs. DeepSpeed then wrapped
    that group in `deepspeed.initialize` and JIT-built its shared-memory allreduce op (an inference
    op): 80 s of a CI run, and a hang on the build's lock file after a kill. A stale lock stands in
    for the build here, so a build would wait on it until the timeout."""
    ext = tmp_path / "ext"
    (ext / "deepspeed_shm_comm").mkdir(parents=True)
    (ext / "deepspeed_shm_comm" / "lock").touch()
    code = (
        "import torch.distributed as dist\n"
        "from infra.procs import free_port\n"
        "url = f'tcp://127.0.0.1:{free_port()}'\n"
        "dist.init_process_group('gloo', init_method=url, rank=0, world_size=1)\n"
        "from trainer.engine import init_distributed\n"
        "init_distributed()\n"
        "from deepspeed.comm import comm\n"
        "comm.init_distributed(dist_backend='gloo')  # what deepspeed.initialize does\n"
        "print('shm op:', comm.cdb.shm_comm_op)\n"
    )
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(ext)}
    p = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=90
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.splitlines()[-1] == "shm op: None", p.stdout
