"""Prompt upsampling: a short user prompt rewritten in the style of the captions a model trained on.

A model trained on detailed captions follows detailed prompts better than the short text users type
(DALL-E 3, Sora). With a local LLM (`model`), the prompt is expanded by instruction. Without one, a
rule-based rewrite in the `stats` captioner's own words: facts the prompt states (colours, motion
direction, black-and-white) are taken from it; everything else (lighting, amount of motion,
duration, size) is the most common value in the caption set the model trained on.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from infra.shards import CAPTIONS, list_shards, read_captions
from recaption.stats import HUES, describe
from recaption.validate import problem

COLOUR_WORDS = {name for _, name in HUES}
DIRECTION_WORDS = ("left", "right", "up", "down")

INSTRUCTION = (
    "Rewrite the user's short video prompt as one detailed paragraph in the style of these "
    "training captions, keeping every fact the prompt states and adding no new subjects.\n"
    "Examples:\n{examples}\nPrompt: {prompt}\nCaption:"
)


def _mode(values: list[Any], default: Any) -> Any:
    hashable = [repr(v) for v in values]
    if not hashable:
        return default
    top = Counter(hashable).most_common(1)[0][0]
    return values[hashable.index(top)]


class Upsampler:
    @classmethod
    def from_caption_set(cls, captions: str, storage: Any, model: str | None = None) -> Upsampler:
        records = [
            r
            for shard in list_shards(captions, storage, CAPTIONS)
            for r in read_captions(shard, storage).values()
        ]
        return cls(records, model)

    def __init__(self, records: list[dict[str, Any]], model: str | None = None):
        """`records`: caption records of a caption set (with `facts` for stats captions)."""
        self.facts = [
            r["facts"] | {"source_caption": r.get("source_caption", "")}
            for r in records
            if r.get("facts") and r.get("text")
        ]
        self.examples = [r["text"] for r in records if r.get("text")][:3]
        self.model = model
        self._llm: Any = None

    def _rules(self, prompt: str, width: int, height: int, seconds: float, fps: float) -> str:
        words = re.findall(r"[a-z]+", prompt.lower())
        colours = [w for w in words if w in COLOUR_WORDS]
        direction = next((w for w in words if w in DIRECTION_WORDS), None)
        typical = self.facts
        colour = {
            "black_and_white": "black" in words and "white" in words,
            "dominant_colours": colours,
            "colourful_share": 0.5
            if _mode([f["colour"]["colourful_share"] > 0.3 for f in typical], False)
            else 0.0,
            "brightness": _mode([round(f["colour"]["brightness"], 1) for f in typical], 0.5),
        }
        shift = None
        if direction:
            shift = {"axis": "x" if direction in ("left", "right") else "y", "direction": direction}
        motion = {
            "change_per_s": _mode([round(f["motion"]["change_per_s"], 2) for f in typical], 0.05),
            "shift": shift,
        }
        facts = {
            "width": width,
            "height": height,
            "seconds": seconds,
            "fps": fps,
            "colour": colour,
            "motion": motion,
            "source_has_cuts": False,
            "scene": 0,
        }
        return describe(facts, prompt)  # the prompt's own words lead: they name the subject

    def _generate(self, prompt: str) -> str:
        from transformers import (
            AutoModelForCausalLM,
            AutoTokenizer,
        )  # only with an LLM, seconds to import

        if self._llm is None:
            tok = AutoTokenizer.from_pretrained(self.model, local_files_only=True)
            lm = AutoModelForCausalLM.from_pretrained(self.model, local_files_only=True).eval()
            self._llm = (tok, lm)
        tok, lm = self._llm
        text = INSTRUCTION.format(examples="\n".join(self.examples), prompt=prompt)
        ids = tok(text, return_tensors="pt")
        out = lm.generate(**ids, max_new_tokens=160, do_sample=False)
        return tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()

    def __call__(
        self, prompt: str, width: int = 64, height: int = 64, seconds: float = 2.0, fps: float = 8.0
    ) -> str:
        if self.model:
            text = self._generate(prompt)
            if problem(text) is None:
                return text
        return self._rules(prompt, width, height, seconds, fps)
