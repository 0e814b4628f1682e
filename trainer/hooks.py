"""Named points in the training loop where a hook object is called: for tests that inject faults
(a SIGKILL at an exact moment of a save) and for tools that observe a run, without any branch for
them in the trainer itself.

Points: `step:begin` (before a step's forward passes), `save:begin` (before anything of the
checkpoint is written), `save:written` (every rank wrote its files; nothing is published yet),
`save:published` (`latest` points at it), `rollback` (the guard has just rolled the run back). With
asynchronous saves the last two run in the saving thread; the trainer they get shows the saved step.
"""

from __future__ import annotations

from typing import Any


class Hooks:
    """The default: does nothing."""

    def at(self, point: str, trainer: Any) -> None:
        """Called on every rank at `point`; `trainer` is the running trainer (step, rank, ...)."""


active: Hooks = Hooks()
"""The hooks the trainers call; replace with `install`."""


def install(hooks: Hooks) -> None:
    global active
    active = hooks
