"""data_pipeline.isolate: a hung or crashing input costs only its own record."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_pipeline import isolate
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


_held: list[bytes] = []


def _leak(mb: int) -> int:
    """Keeps `mb` MiB written (resident) in the child, as a leaking decoder would."""
    _held.append(b"x" * (mb << 20))
    return os.getpid()


def test_hang_and_crash_in_a_batch_of_good_inputs_cost_only_themselves() -> None:
    jobs = [(_sleep, 0.0)] * 4 + [(_sleep, 60.0)] + [(_sleep, 0.0)] * 4 + [(_segfault,)]
    jobs += [(_sleep, 0.0)] * 4
    results = []
    for fn, *args in jobs:
        try:
            results.append(run_isolated(fn, *args, timeout=5))
        except Overrun as e:
            results.append(e.reason.split(":")[0])
    assert results == ["done"] * 4 + ["timeout"] + ["done"] * 4 + ["crash"] + ["done"] * 4


@pytest.mark.skipif(sys.platform != "linux", reason="reads resident memory from /proc (Linux)")
def test_the_reused_child_is_replaced_after_n_inputs_and_past_its_memory_bound() -> None:
    isolate._discard_pool()
    pids = [run_isolated(os.getpid, timeout=30, max_calls=50) for _ in range(200)]
    assert sorted(pids.count(p) for p in set(pids)) == [50, 50, 50, 50]
    isolate._discard_pool()
    base = isolate._rss_mb(run_isolated(os.getpid, timeout=30))
    bound = base + 64
    peak, children = 0.0, set()
    for _ in range(200):  # 200 inputs, each leaving 8 MiB behind
        children.add(run_isolated(_leak, 8, timeout=30, max_rss_mb=bound))
        pid = isolate.child_pid()
        if pid is not None:  # still in use: under its bound
            peak = max(peak, isolate._rss_mb(pid))
    assert 0 < peak <= bound, (peak, bound)
    assert len(children) >= 15  # ~8 inputs per child before it passes the bound
    isolate._discard_pool()


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


def test_shard_workers_import_only_what_they_use() -> None:
    """The Ray task of the shard job lives in data_pipeline.worker, which must not pull in PyAV,
    OpenCV or torch: the worker's child does the decoding (~1.7 s of imports per process on
    cores the decoding needs). The child (data_pipeline.process) needs PyAV and OpenCV, not
    torch (which webdataset imports; ~150 MB more per decoding process). The worker loads none."""
    heavy = "('av', 'cv2', 'torch', 'webdataset', 'scenedetect')"
    root = Path(__file__).resolve().parents[1]
    decoding = ["av", "cv2", "scenedetect"]
    for module, allowed in (("data_pipeline.worker", []), ("data_pipeline.process", decoding)):
        code = f"import sys, {module}\nprint(','.join(m for m in {heavy} if m in sys.modules))"
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
        )
        loaded = [m for m in out.stdout.strip().split(",") if m]
        assert [m for m in loaded if m not in allowed] == [], (module, loaded)
