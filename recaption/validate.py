"""Degenerate caption detection: what VLMs produce when something went wrong."""

from __future__ import annotations

import itertools
import re


def problem(text: str, prompt: str = "") -> str | None:
    """A reason the caption is unusable, or None."""
    words = re.findall(r"\w+", text.lower())
    if len(words) < 3:
        return f"empty or too short ({len(words)} words)"
    run = 1
    for a, b in itertools.pairwise(words):
        run = run + 1 if a == b else 1
        if run >= 4:
            return f"repeated token {a!r}"
    grams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    if len(grams) >= 8 and len(set(grams)) / len(grams) < 0.5:
        return "repetitive (most 3-grams repeat)"
    if prompt:
        p = re.findall(r"\w+", prompt.lower())
        pg = {tuple(p[i : i + 5]) for i in range(len(p) - 4)}
        cg = [tuple(words[i : i + 5]) for i in range(len(words) - 4)]
        if pg and cg and sum(g in pg for g in cg) / len(cg) > 0.3:
            return "echoes the prompt"
    return None
