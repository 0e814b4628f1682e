"""The environment holds what spacetime's imports assume.

Our top-level `kernels/` package shares its import name with Hugging Face's `kernels` library.
transformers 5.25 made that library a hard dependency and imports it by name, so with both
installed it gets ours and every text-encoder load fails deep in transformers (CI stop 36). This
test names the clash instead.
"""

from __future__ import annotations

import importlib.metadata


def test_kernels_import_name_is_ours_alone() -> None:
    owners = set(importlib.metadata.packages_distributions().get("kernels", []))
    assert owners == {"spacetime-dit"}, (
        f"the import name `kernels` is also installed by {sorted(owners - {'spacetime-dit'})}: "
        "transformers would import spacetime's kernels package in its place; "
        "install transformers<5.25 (pyproject.toml) and `pip uninstall kernels`"
    )
