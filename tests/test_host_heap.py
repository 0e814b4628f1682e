"""infra.host_heap: freed host memory is reused by the next training step, not faulted in again."""

from __future__ import annotations

import statistics
import subprocess
import sys
import textwrap

import pytest

from tests.train_runs import REPO

# A child process, so the allocator settings never leak into the test worker's own heap. Six
# steps of a small MLP whose activations (4-16 MiB) are above glibc's mmap threshold.
_CHILD = textwrap.dedent(
    """
    import sys, torch
    from infra.host_heap import retain_freed_memory

    def faults():
        return int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[7])

    if sys.argv[1] == "retain":
        assert retain_freed_memory()
    torch.manual_seed(0)
    m = torch.nn.Sequential(
        torch.nn.Linear(512, 2048), torch.nn.GELU(), torch.nn.Linear(2048, 512)
    )
    opt = torch.optim.AdamW(m.parameters())
    x = torch.randn(4096, 512)
    per_step = []
    for _ in range(6):
        before = faults()
        m(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
        per_step.append(faults() - before)
    print(*per_step)
    """
)


def _faults_per_step(mode: str) -> list[int]:
    p = subprocess.run(
        [sys.executable, "-c", _CHILD, mode], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 0, p.stderr
    return [int(v) for v in p.stdout.split()]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc and /proc: Linux")
def test_training_steps_reuse_freed_memory_instead_of_faulting_it_in() -> None:
    """With glibc's defaults every step page-faults its activations in again (~35k 4-KiB pages a
    step, measured); with the heap retained, the steps after the first few reuse freed blocks."""
    default = _faults_per_step("default")
    retained = _faults_per_step("retain")
    assert min(default[2:]) > 8000, default
    # The median of steps 3-6, not their sum: a retained run can still fault one step's worth in
    # once (a CI run read 0, 0, 14336, 0 against 26-43k a step without retention).
    assert statistics.median(retained[2:]) < statistics.median(default[2:]) / 4, (retained, default)
