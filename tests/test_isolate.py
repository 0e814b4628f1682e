"""data_pipeline.isolate: a hung or crashing input costs only its own record."""

from __future__ import annotations

import os
import signal
import time

import pytest

from data_pipeline.isolate import Overrun, run_isolated


def _sleep(seconds: float) -> str:
    time.sleep(seconds)
    return "done"


def _segfault() -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


def test_result_timeout_and_crash() -> None:
    assert run_isolated(_sleep, 0.0, timeout=30) == "done"
    t0 = time.monotonic()
    with pytest.raises(Overrun, match=r"timeout: no result after 1s \(process killed\)"):
        run_isolated(_sleep, 60.0, timeout=1)
    assert time.monotonic() - t0 < 15
    with pytest.raises(Overrun, match="crash: the decoding process died"):
        run_isolated(_segfault, timeout=30)
    assert run_isolated(_sleep, 0.0, timeout=30) == "done"  # a fresh child replaces the dead one
