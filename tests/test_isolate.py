"""data_pipeline.isolate: a hung or crashing input costs only its own record."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.skipif(sys.platform != "linux", reason="reads process states from /proc (Linux)")
def test_child_dies_with_a_killed_worker() -> None:
    """A SIGKILLed owner (Ray stopping its workers) leaves no decoding child behind."""
    owner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, time\n"
            "from data_pipeline.isolate import run_isolated\n"
            "print(run_isolated(os.getpid, timeout=60), flush=True)\n"
            "time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        child = int(owner.stdout.readline())  # type: ignore[union-attr]
        assert child != owner.pid and _alive(child)
    finally:
        owner.kill()
        owner.wait()
    deadline = time.monotonic() + 20
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(child), f"decoding child {child} outlived its killed owner"
