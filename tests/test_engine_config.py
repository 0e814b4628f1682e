"""The engine's settings: DeepSpeed buckets any model size passes, and one GPU per launched rank."""

from __future__ import annotations

import pytest

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
