"""A watchdog for hung training: a rank that makes no progress for `limit_s` aborts its process.

Collectives on gloo (and NCCL) can wait far past their timeouts when a peer is frozen rather than
dead (SIGSTOP, a hung filesystem, a stuck kernel): the survivors sit in all_reduce forever
(../shared/PLATFORM.md). Each rank therefore runs this thread; when the training loop has not
called `beat()` for `limit_s`, it logs why and exits the process with status 3, so the launcher
sees a failure and can relaunch from the last checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator

log = logging.getLogger(__name__)

EXIT_HUNG = 3


class Watchdog:
    def __init__(self, limit_s: float, rank: int):
        self.limit_s, self.rank = limit_s, rank
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
            self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(min(1.0, self.limit_s / 4)):
            idle = time.monotonic() - self.last
            if idle > self.allowed_s:
                msg = (
                    f"watchdog: rank {self.rank} made no training progress for {idle:.0f}s (limit "
                    f"{self.allowed_s:.0f}s) after {self.what}; a peer is probably frozen or gone. "
                    "Aborting so the job can be relaunched with --resume auto."
                )
                log.critical(msg)
                print(msg, flush=True)
                os._exit(EXIT_HUNG)
