"""Running one input's work in a child process with a hard time limit.

FFmpeg can hang or crash inside C code on a pathological file, where no Python-level deadline check
runs. Each Ray worker keeps one child process (started by a forkserver, so it is forked from a clean
single-threaded parent) and reuses it across inputs, so PyAV, OpenCV and PySceneDetect are imported
once per worker, not per file; a call that overruns its limit, or kills the child, becomes an error
for that input only, and the child is replaced. So is a child that served `shard.worker_max_files`
inputs or grew past `shard.worker_max_rss_mb`.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from infra.procs import exit_when_gone

R = TypeVar("R")

_pool: cf.ProcessPoolExecutor | None = None
_calls = 0  # calls served by the current child


class Overrun(Exception):
    """The call ran past its time limit or its process died; `reason` says which."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _watch_owner(owner: int) -> None:
    """Runs first in the child: exit as soon as the process that owns the pool does. Ray SIGKILLs
    its workers at shutdown, and the child would not notice: it waits on its call queue, whose
    write end it holds itself, and keeps the forkserver alive too (each forkserver child holds
    the server's liveness pipe), both orphaned with PyAV and OpenCV loaded (~230 MB each)."""
    exit_when_gone(owner, "the Ray worker that owns this decoding process")


def _get_pool() -> cf.ProcessPoolExecutor:
    global _pool
    if _pool is None:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["data_pipeline.process"])
        _pool = cf.ProcessPoolExecutor(
            max_workers=1, mp_context=ctx, initializer=_watch_owner, initargs=(os.getpid(),)
        )
    return _pool


def _discard_pool() -> None:
    global _pool, _calls
    _calls = 0
    if _pool is not None:
        for p in list(getattr(_pool, "_processes", {}).values()):
            p.kill()
        _pool.shutdown(wait=False, cancel_futures=True)
        _pool = None


def child_pid() -> int | None:
    """The current child's pid (None before the first call or after a replacement)."""
    procs = list(getattr(_pool, "_processes", None) or {})
    return procs[0] if procs else None


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return 0.0  # not Linux, or already gone: nothing to bound


def run_isolated(
    fn: Callable[..., R],
    *args: Any,
    timeout: float,
    max_calls: int = 0,
    max_rss_mb: float = 0,
) -> R:
    """`fn(*args)` in the child process; raises Overrun on timeout or a dead child. The child is
    reused (its imports are paid once) and replaced after `max_calls` calls or once its resident
    memory passes `max_rss_mb` (0: no bound), so a leak in a decoder cannot grow without end."""
    global _calls
    pool = _get_pool()
    future = pool.submit(fn, *args)
    try:
        result = future.result(timeout=timeout)
    except cf.TimeoutError:
        _discard_pool()
        raise Overrun(f"timeout: no result after {timeout:.0f}s (process killed)") from None
    except cf.process.BrokenProcessPool:
        _discard_pool()
        raise Overrun("crash: the decoding process died (e.g. a segfault in FFmpeg)") from None
    _calls += 1
    pid = child_pid()
    if (max_calls and _calls >= max_calls) or (
        max_rss_mb and pid is not None and _rss_mb(pid) > max_rss_mb
    ):
        _discard_pool()  # idle between calls: nothing is lost
    return result
