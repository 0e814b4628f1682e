"""Process memory readings for the benchmarks (Linux /proc; CUDA through torch)."""

from __future__ import annotations

import ctypes
import gc
import os


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def trim() -> None:
    """Returns freed heap pages to the OS, so resident memory shows what is still held (glibc
    keeps freed blocks otherwise, and a later allocation would not raise the resident size)."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def reset_peak() -> float:
    """Trims the heap, resets the kernel's resident high-water mark (VmHWM) and returns the
    resident MiB it starts from."""
    trim()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_mb("VmRSS")


def peak_mb() -> float:
    return _status_mb("VmHWM")


def exact_heap() -> None:
    """Makes every large allocation its own mmap, returned to the OS when freed. glibc otherwise
    raises its mmap threshold after the first large free and serves later tensors from a heap
    that only grows, so resident memory would show fragmentation rather than live tensors."""
    m_mmap_threshold = -3
    ctypes.CDLL("libc.so.6").mallopt(m_mmap_threshold, 128 * 1024)
