"""The `vllm` captioner: batched GPU inference with vLLM, when it is installed (GPU machines only)."""

from __future__ import annotations

from typing import Any

from PIL import Image

from infra.errors import JobError
from recaption.config import RecaptionConfig
from recaption.prompts import get_prompt


def check_vllm() -> None:
    try:
        import vllm  # noqa: F401
    except ImportError:
        raise JobError(
            "--backend vllm needs the vllm package, which installs only on GPU machines "
            "(pip install vllm); use --backend hf (any transformers model) or stats here"
        ) from None


class VLLMCaptioner:
    backend = "vllm"

    def __init__(self, cfg: RecaptionConfig):
        check_vllm()
        from vllm import LLM, SamplingParams  # optional GPU package

        self.prompt = get_prompt(cfg.prompt)
        self.model_id = cfg.model
        self.llm = LLM(model=cfg.model, limit_mm_per_prompt={"image": cfg.frames})
        self.params = SamplingParams(
            temperature=cfg.temperature, max_tokens=cfg.max_new_tokens or self.prompt.max_new_tokens
        )

    def caption(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:

        requests = []
        for it in items:
            content = [{"type": "image"}] * len(it["frames"]) + [
                {"type": "text", "text": self.prompt.text}
            ]
            tok = self.llm.get_tokenizer()
            text = tok.apply_chat_template(
                [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
            )
            images = [Image.fromarray(f) for f in it["frames"]]
            requests.append({"prompt": text, "multi_modal_data": {"image": images}})
        outs = self.llm.generate(requests, self.params, use_tqdm=False)
        return [{"text": o.outputs[0].text.strip()} for o in outs]
