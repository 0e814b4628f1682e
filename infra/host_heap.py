"""Host heap settings for long-running compute processes (training ranks, captioning actors):
freed memory stays in the heap for the next step.

glibc returns large freed blocks to the OS (each is its own mmap, and the heap's top is trimmed),
so a step that frees and reallocates the same activations, gradients and DeepSpeed buffers
page-faults them in again, zero-filled by the kernel: 115-146k faults (~500 MB) per DiT-S step on
a 2-core CPU, where a step took 1.05x as long as with the heap retained; DiT-B 1.31x; the demo's
VAE training 1.14x (BENCHMARKS.md, issue 24). With mmap off and the trim threshold at its maximum,
freed blocks are reused: 5 faults a step. Resident memory then stays at the run's high-water mark,
which a training process reaches every step anyway. PyTorch's CUDA caching allocator does the same
for device memory; jemalloc or tcmalloc would too, but need a system library and an LD_PRELOAD in
every launcher, where this is three mallopt calls.
"""

from __future__ import annotations

import ctypes
import logging
import sys

log = logging.getLogger(__name__)

# glibc's <malloc.h> parameter numbers.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4
_INT_MAX = 2**31 - 1  # mallopt takes a C int


def retain_freed_memory() -> bool:
    """Sets glibc's malloc to keep freed memory for reuse; False (and nothing changed) where the
    C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl and others: no glibc tunables
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _INT_MAX), (_M_TOP_PAD, 64 << 20))
    ok = all(mallopt(param, value) == 1 for param, value in settings)
    log.debug("host heap: freed memory retained for reuse (%s)", "ok" if ok else "partly refused")
    return ok
