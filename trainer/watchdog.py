"""A watchdog for hung training: a rank that makes no progress for `limit_s` aborts its process.

Collectives on gloo (and NCCL) can wait far past their timeouts when a peer is frozen rather than
dead (SIGSTOP, a hung filesystem, a stuck kernel): the survivors sit in all_reduce forever
(../shared/PLATFORM.md). Each rank therefore runs this thread; when the training loop has not
called `beat()` for `limit_s`, it logs why and exits the process with status 3, so the launcher
sees a failure and can relaunch from the last checkpoint. With several ranks it also watches its
neighbours' heartbeats (trainer/heartbeat.py), which catch a peer frozen while this rank waits
inside a long allowance (a checkpoint save).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator

from trainer.heartbeat import Heartbeats

log = logging.getLogger(__name__)

EXIT_HUNG = 3


class Watchdog:
    def __init__(
        self, limit_s: float, rank: int, world: int = 1, heartbeats: Heartbeats | None = None
    ):
        """`world` > 1: heartbeats through the launcher's store (`heartbeats` to pass others)."""
        self.limit_s, self.rank, self.world, self.heartbeats = limit_s, rank, world, heartbeats
        self.allowed_s = limit_s
        self.last = time.monotonic()
        self.what = "start-up"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self, what: str) -> None:
        self.last = time.monotonic()
        self.what = what

    @contextlib.contextmanager
    def allowance(self, seconds: float, what: str) -> Iterator[None]:
        """A longer limit for work that is slow by nature but bounded by its own timeout (a
        checkpoint save and its upload: train.save_timeout_s), then the step limit again."""
        self.beat(what)
        self.allowed_s = max(self.limit_s, seconds)
        try:
            yield
        finally:
            self.allowed_s = self.limit_s
            self.beat(f"{what}, done")

    def start(self) -> Watchdog:
        if self.limit_s > 0:
            if self.heartbeats is None:
                self.heartbeats = Heartbeats.for_job(self.rank, self.world, self.limit_s)
            if self.heartbeats is not None:
                self.heartbeats.start()
            self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self.heartbeats is not None:
            self.heartbeats.stop()

    def _run(self) -> None:
        while not self._stop.wait(min(1.0, self.limit_s / 4)):
            idle = time.monotonic() - self.last
            stale = self.heartbeats.stale() if self.heartbeats is not None else None
            if idle > self.allowed_s:
                why = (
                    f"rank {self.rank} made no training progress for {idle:.0f}s (limit "
                    f"{self.allowed_s:.0f}s) after {self.what}; a peer is probably frozen or gone"
                )
            elif stale is not None:
                why = (
                    f"rank {self.rank}'s neighbour rank {stale[0]} sent no heartbeat for "
                    f"{stale[1]:.0f}s (limit {self.limit_s:.0f}s) while this rank was at "
                    f"{self.what}; it is probably frozen or gone"
                )
            else:
                continue
            msg = f"watchdog: {why}. Aborting so the job can be relaunched with --resume auto."
            log.critical(msg)
            print(msg, flush=True)
            os._exit(EXIT_HUNG)
