"""Named, versioned caption prompts. A caption records the name and version it was written with, so
a caption set made with an older prompt is never mistaken for a newer one."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Prompt:
    name: str
    version: int
    text: str
    max_new_tokens: int


PROMPTS: dict[str, Prompt] = {
    p.name: p
    for p in (
        Prompt(
            "detailed",
            1,
            "Describe this video in detail for a text-to-video training caption, as one paragraph. "
            "Cover the main subjects and their appearance, what they do and how they move, the "
            "setting and background, colours and lighting, the camera's framing and movement, and "
            "the visual style. State only what is visible; do not guess names or sounds.",
            256,
        ),
        Prompt(
            "short",
            1,
            "Describe this video in one sentence: the main subject, its action and the setting.",
            64,
        ),
    )
}


def get_prompt(name: str | None) -> Prompt:
    name = name or "detailed"
    if name not in PROMPTS:
        raise ValueError(f"unknown prompt {name!r}; prompts: {', '.join(PROMPTS)}")
    return PROMPTS[name]
