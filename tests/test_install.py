"""The environment holds what spacetime's imports assume.

Our top-level `kernels/` package shares its import name with Hugging Face's `kernels` library.
transformers 5.25 made that library a hard dependency and imports it by name, so with both
installed it gets ours and every text-encoder load fails deep in transformers (CI stop 36). This
test names the clash instead.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from collections.abc import Callable

from trainer.deepspeed_init import _MUON as MUON
from trainer.deepspeed_init import _deferred_compile


def test_kernels_import_name_is_ours_alone() -> None:
    owners = set(importlib.metadata.packages_distributions().get("kernels", []))
    assert owners == {"spacetime-dit"}, (
        f"the import name `kernels` is also installed by {sorted(owners - {'spacetime-dit'})}: "
        "transformers would import spacetime's kernels package in its place; "
        "install transformers<5.25 (pyproject.toml) and `pip uninstall kernels`"
    )


def test_deepspeeds_muon_is_imported_without_loading_torchinductor() -> None:
    # A fresh process, as every rank is: what it imports is the start-up cost being tested.
    code = (
        "import sys\n"
        "from trainer.deepspeed_init import import_deepspeed_muon_lazily\n"
        "import_deepspeed_muon_lazily()\n"
        "from deepspeed.runtime.zero.muon import original_muon as m\n"
        "f = m.zeropower_via_newtonschulz5\n"
        "print('inductor' if 'torch._inductor.compile_fx' in sys.modules else 'no inductor',\n"
        "      f.__wrapped__.__module__, f.__name__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.splitlines()[-1].split() == [
        "no",
        "inductor",
        MUON,
        "zeropower_via_newtonschulz5",
    ], out


def test_a_deferred_compile_compiles_once_on_the_first_call_with_the_same_options() -> None:
    calls: list[tuple[Callable[..., int], dict[str, object]]] = []

    def compile_(fn: Callable[..., int], **kw: object) -> Callable[..., int]:
        calls.append((fn, kw))
        return lambda *a: fn(*a) + 100  # a "compiled" function that can be told apart

    lazy = _deferred_compile(compile_)

    def double(x: int) -> int:
        return 2 * x

    plain, with_options = lazy(double), lazy(fullgraph=True)(double)
    assert calls == [] and plain.__name__ == "double"
    assert plain(1) == 102 and plain(2) == 104 and with_options(3) == 106
    assert calls == [(double, {}), (double, {"fullgraph": True})]
