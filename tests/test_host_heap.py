"""trainer.host_heap: freed host memory is reused, not faulted in again from the OS."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tests.test_train_deepspeed import REPO

# A child process, so the allocator settings never leak into the test worker's own heap.
_CHILD = textwrap.dedent(
    """
    import sys, torch
    from trainer.host_heap import retain_freed_memory

    def faults():
        return int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[7])

    if sys.argv[1] == "retain":
        assert retain_freed_memory()
    x = torch.ones(16 << 20)  # 64 MiB: its own mmap under glibc's defaults
    del x
    before = faults()
    y = torch.ones(16 << 20)  # the same size again, written through
    print(faults() - before, float(y.sum()))
    """
)


def _second_allocation_faults(mode: str) -> int:
    p = subprocess.run(
        [sys.executable, "-c", _CHILD, mode], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 0, p.stderr
    faults, total = p.stdout.split()
    assert float(total) == 16 << 20
    return int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc and /proc: Linux")
def test_a_freed_tensor_is_reused_without_page_faults() -> None:
    """With the defaults, a 64 MiB tensor freed and allocated again is faulted in page by page
    (16k 4-KiB pages); with the heap retained, the second allocation reuses the freed pages."""
    default = _second_allocation_faults("default")
    retained = _second_allocation_faults("retain")
    assert default > 8000, default
    assert retained < 500, retained
