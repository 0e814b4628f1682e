"""Faults injected into real training processes through the trainer's hook object (trainer.hooks):
rank 0 SIGKILLs itself at an exact point of one checkpoint save, once per run directory, so a
relaunch of the same command gets past it.

Use `fault_env("save:written@6")` in a child's environment: tests/fault_site/sitecustomize.py
installs the hook there. Points: the trainer's `save:begin` (nothing of the checkpoint written yet)
and `save:written` (every file written, not published), and `save:inside` (rank 0 is killed after
DeepSpeed wrote its first file of the checkpoint).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import torch

from trainer import hooks

SITE = Path(__file__).resolve().parent / "fault_site"


def fault_env(spec: str) -> dict[str, str]:
    """Environment variables that make a training child kill itself at `spec` (POINT@STEP)."""
    repo = str(SITE.parents[1])
    path = os.pathsep.join(p for p in (str(SITE), repo, os.environ.get("PYTHONPATH", "")) if p)
    return {"SPACETIME_TEST_FAULT": spec, "PYTHONPATH": path}


class KillAt(hooks.Hooks):
    def __init__(self, point: str, step: int):
        self.point, self.step = point, step

    def at(self, point: str, trainer: Any) -> None:
        if trainer.step != self.step or trainer.d.rank != 0:
            return
        marker = trainer.ckpt.local / f".fault-{self.point.replace(':', '-')}-{self.step}"
        if marker.exists():
            return
        if self.point == "save:inside" and point == "save:begin":
            real = torch.save

            def save_then_die(obj: Any, f: Any, *args: Any, **kwargs: Any) -> Any:
                real(obj, f, *args, **kwargs)
                marker.touch()
                os.kill(os.getpid(), signal.SIGKILL)

            torch.save = save_then_die
        elif point == self.point:
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)


def install_from_env() -> None:
    point, _, step = os.environ["SPACETIME_TEST_FAULT"].partition("@")
    hooks.install(KillAt(point, int(step)))
