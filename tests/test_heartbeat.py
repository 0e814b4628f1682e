"""Peer heartbeats over a real c10d TCPStore: a neighbour that stops beating is named, one that
finished is not, and a watchdog inside a long allowance still ends its rank for a frozen peer."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from datetime import timedelta

import torch.distributed as dist

from infra.procs import free_port
from trainer.heartbeat import Heartbeats

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _store(port: int, master: bool) -> dist.TCPStore:
    return dist.TCPStore("127.0.0.1", port, is_master=master, timeout=timedelta(seconds=10))


def _wait(cond, limit: float) -> float:  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if cond():
            return time.monotonic() - t0
        time.sleep(0.05)
    raise AssertionError(f"not within {limit}s")


def test_a_neighbour_that_stops_beating_is_named_one_that_finished_is_not() -> None:
    port = free_port()
    master = _store(port, True)
    # Limits of seconds, not tenths: on a loaded 2-core CI machine a thread can wait its turn.
    beats = [Heartbeats(_store(port, False), r, 3, limit_s=3.0, period_s=0.2) for r in range(3)]
    try:
        for b in beats:
            b.start()
        time.sleep(4.0)  # longer than the limit: all beating, nobody stale
        assert [b.stale() for b in beats] == [None, None, None]
        beats[2].stop()  # finished: says so
        time.sleep(4.0)
        assert [b.stale() for b in beats] == [None, None, None]
        beats[1]._stop.set()  # frozen: stops beating without a word
        took = _wait(lambda: beats[0].stale() is not None, 15.0)
        peer, seconds = beats[0].stale()  # type: ignore[misc]
        assert peer == 1 and seconds > 3.0 and 2.5 < took < 10.0, (peer, seconds, took)
    finally:
        for b in beats:
            b._stop.set()
        del master


def test_a_watchdog_inside_a_long_allowance_ends_its_rank_for_a_frozen_peer() -> None:
    """The save's allowance is hours long; a peer frozen meanwhile must still end the job."""
    port = free_port()
    master = _store(port, True)
    peer = Heartbeats(_store(port, False), 1, 2, limit_s=3.0, period_s=0.2).start()
    code = textwrap.dedent(
        f"""
        import time
        from datetime import timedelta
        import torch.distributed as dist
        from trainer.heartbeat import Heartbeats
        from trainer.watchdog import Watchdog
        store = dist.TCPStore("127.0.0.1", {port}, is_master=False, timeout=timedelta(seconds=10))
        dog = Watchdog(3.0, 0, 2, Heartbeats(store, 0, 2, limit_s=3.0, period_s=0.2)).start()
        with dog.allowance(3600, "checkpoint at step 8"):
            print("waiting", flush=True)
            time.sleep(60)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "waiting"
        time.sleep(5.0)
        assert proc.poll() is None  # the peer beats: an allowance of an hour is honoured
        peer._stop.set()  # the peer freezes
        t0 = time.monotonic()
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 3 and time.monotonic() - t0 < 15, (proc.returncode, out)
        assert "neighbour rank 1 sent no heartbeat" in out and "checkpoint at step 8" in out, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        peer._stop.set()
        del master
