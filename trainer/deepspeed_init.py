"""`deepspeed.initialize` without DeepSpeed's Muon start-up cost.

DeepSpeed's ZeRO path (its optimizer check and five other places) imports its own Muon module,
whose three `@torch.compile` decorators import TorchInductor at decoration time: ~1.7 s of CPU in
every ZeRO rank's start-up, for an optimizer spacetime never runs (trainer/muon.py is its own).
On a cluster that is noise; in the test suite, which starts a few hundred ranks on two cores, it
is minutes. Importing that module once with `torch.compile` deferred to each function's first
call leaves DeepSpeed's code as it is and still compiles exactly as before if anything calls it."""

from __future__ import annotations

import functools
import importlib
import sys
from collections.abc import Callable
from typing import Any

import deepspeed
import torch

_MUON = "deepspeed.runtime.zero.muon.original_muon"


def _deferred_compile(real: Callable[..., Any]) -> Callable[..., Any]:
    def compile_later(model: Callable[..., Any] | None = None, **kwargs: Any) -> Any:
        def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
            compiled: Callable[..., Any] | None = None

            @functools.wraps(fn)
            def call(*args: Any, **kw: Any) -> Any:
                nonlocal compiled
                if compiled is None:
                    compiled = real(fn, **kwargs)
                return compiled(*args, **kw)

            return call

        return wrap if model is None else wrap(model)

    return compile_later


def import_deepspeed_muon_lazily() -> None:
    if _MUON in sys.modules:
        return
    real = torch.compile
    torch.compile = _deferred_compile(real)  # type: ignore[assignment]
    try:
        importlib.import_module(_MUON)
    except ImportError:  # another DeepSpeed version, laid out differently: pay the cost
        pass
    finally:
        torch.compile = real


def initialize(**kwargs: Any) -> Any:
    import_deepspeed_muon_lazily()
    return deepspeed.initialize(**kwargs)
