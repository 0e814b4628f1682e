"""Frozen text encoders loaded from a local folder (MiniLM by default), token states per caption."""
