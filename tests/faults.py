"""Faults injected into real training processes through the trainer's hook object (trainer.hooks):
rank 0 SIGKILLs itself at an exact point of one checkpoint save, once per run directory, so a
relaunch of the same command gets past it.

Use `fault_env("save:written@6")` in a child's environment: tests/fault_site/sitecustomize.py
installs the hook there. Points: the trainer's `save:begin` (nothing of the checkpoint written yet)
and `save:written` (every file written, not published), and `save:inside` (rank 0 is killed after
DeepSpeed wrote its first file of the checkpoint), `rollback` (just after the guard rolled the
run back). `grad:nan@6/1` makes rank 1's gradients NaN in step 6 (GradAt); specs join with ';'.
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


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the gradient times `factor` backward (the loss stays what it was)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, None]:
        return g * ctx.factor, None


class GradAt(hooks.Hooks):
    """Scales one rank's (or every rank's) gradients by `factor` (nan, or a spike) during the
    given steps, through a forward hook on the model's output; once per step and run directory,
    so a rollback that trains those step numbers again on other data gets clean gradients."""

    def __init__(self, factor: float, steps: set[int], rank: int | None):
        self.factor, self.steps, self.rank = factor, steps, rank
        self.handle: Any = None

    def at(self, point: str, trainer: Any) -> None:
        if point != "step:begin":
            return
        if self.handle is not None:
            self.handle.remove()
            self.handle = None
        step = trainer.step + 1  # the step about to run
        if step not in self.steps or self.rank not in (None, trainer.d.rank):
            return
        marker = trainer.ckpt.local / f".fault-grad-{step}-rank{trainer.d.rank}"
        if marker.exists():
            return
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        f = self.factor
        self.handle = trainer.engine.module.register_forward_hook(
            lambda _m, _i, out: _ScaleGrad.apply(out, f)
        )


class DumpAt(hooks.Hooks):
    """At `save:begin` of step `step`, every rank gathers the whole module (ZeRO-3 partitions
    included, frozen weights too, which checkpoints of LoRA runs leave out) and rank 0 writes it
    to {run}/weights-step-N.pt: what the engine really holds, not what a checkpoint kept."""

    def __init__(self, step: int):
        self.step = step

    def at(self, point: str, trainer: Any) -> None:
        if point != "save:begin" or trainer.step != self.step:
            return
        import deepspeed

        module = trainer.engine.module
        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            if trainer.d.rank == 0:
                sd = {k: v.detach().float().clone() for k, v in module.state_dict().items()}
                torch.save(sd, trainer.local / f"weights-step-{self.step}.pt")


class Several(hooks.Hooks):
    def __init__(self, hooks_: list[hooks.Hooks]):
        self.hooks = hooks_

    def at(self, point: str, trainer: Any) -> None:
        for h in self.hooks:
            h.at(point, trainer)


def parse(spec: str) -> hooks.Hooks:
    """`POINT@STEP` (KillAt), `grad:FACTOR@S1,S2[/RANK]` (GradAt) or `dump@STEP` (DumpAt);
    several joined by ';'."""
    parts: list[hooks.Hooks] = []
    for one in spec.split(";"):
        point, _, at = one.partition("@")
        if point == "dump":
            parts.append(DumpAt(int(at)))
        elif point.startswith("grad:"):
            steps, _, rank = at.partition("/")
            parts.append(
                GradAt(
                    float(point[5:]),
                    {int(x) for x in steps.split(",")},
                    int(rank) if rank else None,
                )
            )
        else:
            parts.append(KillAt(point, int(at)))
    return parts[0] if len(parts) == 1 else Several(parts)


def install_from_env() -> None:
    hooks.install(parse(os.environ["SPACETIME_TEST_FAULT"]))
