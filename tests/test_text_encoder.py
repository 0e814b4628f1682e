"""trainer.text: the packaged MiniLM, and tiny T5 / CLIP encoders saved and loaded from disk."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import SHARED
from trainer.text.encoder import TextEncoder, TextEncoderConfig

TOKENIZERS = SHARED / "data" / "tokenizers"


def test_minilm_default_encodes_variable_length_captions() -> None:
    enc = TextEncoder()
    a, b, empty = enc.encode(
        ["a red circle moving left", "a blue square moving up slowly over grass", ""]
    )
    assert (
        enc.dim == 384 and a.shape[1] == 384 and b.shape[0] > a.shape[0] and empty.shape == (0, 384)
    )
    torch.testing.assert_close(enc.encode(["a red circle moving left"])[0], a)
    # Real pretrained weights, not random ones: a paraphrase lies closer than an unrelated
    # sentence, by a margin random weights do not give (measured with MiniLM: cosine 0.46 vs -0.05
    # on mean-pooled states; a randomly initialised copy of the model: 0.94 vs 0.91).
    para, other = enc.encode(
        ["a crimson disc sliding to the left", "the quarterly tax report is due on monday"]
    )
    cos = torch.nn.functional.cosine_similarity
    near, far = cos(a.mean(0), para.mean(0), dim=0), cos(a.mean(0), other.mean(0), dim=0)
    assert near - far > 0.3, (float(near), float(far))


def _save_tiny_t5(path: Path) -> None:
    from transformers import AutoTokenizer, T5Config, T5EncoderModel

    tok = AutoTokenizer.from_pretrained(TOKENIZERS / "t5_spm")
    assert len(tok) == 1101  # not a silent fallback tokenizer
    cfg = T5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    T5EncoderModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)


def _save_tiny_clip(path: Path) -> None:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(TOKENIZERS / "clip_bpe")
    cfg = CLIPTextConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
    )
    CLIPTextModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)


@pytest.mark.parametrize("save", [_save_tiny_t5, _save_tiny_clip], ids=["t5", "clip"])
def test_tiny_encoders_load_from_a_local_directory(save, tmp_path: Path) -> None:
    if not TOKENIZERS.is_dir():
        pytest.skip(f"tokenizer files not found at {TOKENIZERS}")
    save(tmp_path / "enc")
    enc = TextEncoder(TextEncoderConfig(path=str(tmp_path / "enc"), max_length=16))
    (x, y) = enc.encode(["a cat", "a dog running on the beach at sunset with waves " * 3])
    assert enc.dim == 32 and x.shape[1] == 32 and y.shape[0] == 16  # cut to max_length
    assert x.shape[0] < y.shape[0]


def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="text encoder directory not found"):
        TextEncoder(TextEncoderConfig(path=str(tmp_path / "nope")))
