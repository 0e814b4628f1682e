"""Frozen text encoders."""

from trainer.text.encoder import TextEncoder, TextEncoderConfig

__all__ = ["TextEncoder", "TextEncoderConfig"]
