"""Lazy package exports: configs import light, torch-heavy modules load on first attribute use."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_getattr(exports: dict[str, str]) -> Callable[[str], Any]:
    """A module-level __getattr__ resolving `name` from the module `exports[name]` names."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(exports[name]), name)
        raise AttributeError(name)

    return __getattr__
