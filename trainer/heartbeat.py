"""Peer heartbeats through the job's c10d store: a frozen rank is found even inside a long wait.

The watchdog (trainer/watchdog.py) ends a rank whose own loop stops moving, but a checkpoint save
is allowed hours (train.save_timeout_s: one rank per node may be uploading to S3 while the others
wait at the save's barrier), and gloo's barrier never times out on a peer that is alive but
frozen (SIGSTOP, a hung filesystem: ../shared/PLATFORM.md). A freeze that lands inside a save then
held the job for hours. So each rank also proves it is alive: a thread bumps a counter in the
job's TCPStore every second, and each rank watches its two ring neighbours' counters. A neighbour
whose counter stops for the watchdog's limit is frozen (a slow upload still beats: the thread
runs beside it); one that finished writes "done" and is left alone. Watching neighbours only
keeps the store's load at ~3 ops per rank per second; the first rank to notice ends itself, and
its exit breaks every other rank's next collective.

Its own store client (a second connection to the launcher's store, with a short timeout): the
default group's client can be held by the main thread, and a heartbeat must never wait on it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import timedelta
from typing import Any

log = logging.getLogger(__name__)

DONE = b"done"
_generation = 0  # per process: every rank starts its heartbeats in the same order


def _key(prefix: str, rank: int) -> str:
    return f"{prefix}/{rank}"


class Heartbeats:
    """A daemon thread beating for `rank` and watching its ring neighbours; `stale()` names a
    neighbour whose beats stopped for longer than `limit_s`."""

    def __init__(
        self,
        store: Any,
        rank: int,
        world: int,
        limit_s: float,
        period_s: float = 1.0,
        prefix: str = "spacetime/heartbeat",
    ):
        self.prefix = prefix
        self.store, self.rank, self.limit_s, self.period_s = store, rank, limit_s, period_s
        self.peers = sorted({(rank - 1) % world, (rank + 1) % world} - {rank})
        self._seen: dict[int, tuple[bytes | None, float]] = {}
        self._stale: tuple[int, float] | None = None
        self._count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    @classmethod
    def for_job(cls, rank: int, world: int, limit_s: float) -> Heartbeats | None:
        """Heartbeats over the launcher's store (MASTER_ADDR:MASTER_PORT), or None for a world of
        one or a limit of 0."""
        if world < 2 or limit_s <= 0:
            return None
        import torch.distributed as dist

        global _generation
        _generation += 1
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        # A relaunched job (torchrun --max-restarts) reuses the store: its keys are per attempt.
        prefix = f"spacetime/heartbeat/{attempt}/{_generation}"
        try:
            store = dist.TCPStore(
                os.environ["MASTER_ADDR"],
                int(os.environ["MASTER_PORT"]),
                is_master=False,
                timeout=timedelta(seconds=max(5.0, limit_s / 2)),
            )
        except (KeyError, ValueError, RuntimeError) as e:
            # A launcher that set up the group some other way: the step limit still holds.
            log.warning("heartbeat: no store to beat in (%s); the watchdog's step limit only", e)
            return None
        beats = cls(store, rank, world, limit_s, prefix=prefix)
        log.info(
            "heartbeat: rank %d beats in the store at %s:%s and watches ranks %s",
            rank,
            os.environ["MASTER_ADDR"],
            os.environ["MASTER_PORT"],
            beats.peers,
        )
        return beats

    def start(self) -> Heartbeats:
        self._beat()
        now = time.monotonic()
        self._seen = {p: (None, now) for p in self.peers}
        self._thread.start()
        return self

    def stale(self) -> tuple[int, float] | None:
        """(neighbour rank, seconds without a beat) once one passed the limit, else None."""
        return self._stale

    def stop(self) -> None:
        """This rank is done: neighbours stop watching it."""
        self._stop.set()
        try:
            self.store.set(_key(self.prefix, self.rank), DONE)
        except Exception as e:  # the store may be gone with the launcher: nothing left to tell
            log.debug("heartbeat: could not mark rank %d done: %s", self.rank, e)

    def _beat(self) -> None:
        self._count += 1
        self.store.set(_key(self.prefix, self.rank), str(self._count))

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self._beat()
                self._watch(time.monotonic())
            except Exception as e:
                # The store unreachable (its host gone): the watchdog's own limit and the
                # collectives' errors still end the rank; keep trying quietly.
                log.debug("heartbeat: store error: %s", e)

    def _watch(self, now: float) -> None:
        for peer in self.peers:
            key = _key(self.prefix, peer)
            value = self.store.get(key) if self.store.check([key]) else None
            last, since = self._seen[peer]
            if value != last:
                self._seen[peer] = (value, now)
            elif value not in (None, DONE) and now - since > self.limit_s and self._stale is None:
                # One that never beat is still starting (the watchdog's start-up limit covers it);
                # one that beat and stopped without saying "done" is frozen or gone.
                self._stale = (peer, now - since)
