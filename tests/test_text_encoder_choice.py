"""Sampling picks the text encoder the training latents were encoded with (trainer/text/which.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infra.storage import Storage
from trainer.config import DataSource, TrainConfig
from trainer.text.encoder import default_model_path
from trainer.text.which import dir_id, text_encoder_for


def _latents(root: Path, name: str, encoder: str) -> str:
    """A latent set folder whose job.json records `encoder` as `spacetime encode` does."""
    d = root / name
    d.mkdir()
    (d / "job.json").write_text(json.dumps({"settings": {"text_encoder": dir_id(encoder)}}))
    return str(d)


def _encoder(root: Path, name: str, hidden: int = 384) -> str:
    """An encoder directory of MiniLM's width but another config (another model)."""
    d = root / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"hidden_size": hidden, "name": name}))
    return str(d)


def _cfg(latents: str = "", sources: tuple[str, ...] = ()) -> TrainConfig:
    cfg = TrainConfig()
    cfg.data.latents = latents
    cfg.data.sources = [DataSource(latents=s) for s in sources]
    return cfg


def test_latents_of_the_packaged_encoder_sample_with_it(tmp_path: Path) -> None:
    cfg = _cfg(_latents(tmp_path, "lat", default_model_path()))
    assert text_encoder_for(cfg, None, Storage()) is None


def test_latents_of_another_encoder_sample_with_that_one(tmp_path: Path) -> None:
    other = _encoder(tmp_path, "other")
    cfg = _cfg(_latents(tmp_path, "lat", other))
    assert text_encoder_for(cfg, None, Storage()) == str(tmp_path / "other")


def test_an_explicit_encoder_of_the_same_width_but_another_model_is_refused(
    tmp_path: Path,
) -> None:
    lat = _latents(tmp_path, "lat", default_model_path())
    other = _encoder(tmp_path, "other")
    with pytest.raises(ValueError, match="not the one the training latents were encoded with") as e:
        text_encoder_for(_cfg(lat), other, Storage())
    assert lat in str(e.value)
    # The same model moved elsewhere (same config) is accepted.
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "config.json").write_bytes((Path(default_model_path()) / "config.json").read_bytes())
    assert text_encoder_for(_cfg(lat), str(moved), Storage()) == str(moved)


def test_an_encoder_missing_here_or_mixed_encoders_name_the_latents(tmp_path: Path) -> None:
    gone = _encoder(tmp_path, "gone")
    lat = _latents(tmp_path, "lat", gone)
    (Path(gone) / "config.json").unlink()
    Path(gone).rmdir()
    with pytest.raises(ValueError, match="not on this machine"):
        text_encoder_for(_cfg(lat), None, Storage())
    a = _latents(tmp_path, "a", default_model_path())
    b = _latents(tmp_path, "b", _encoder(tmp_path, "other"))
    with pytest.raises(ValueError, match="different text encoders") as e:
        text_encoder_for(_cfg(sources=(a, b)), None, Storage())
    assert a in str(e.value) and b in str(e.value)


def test_clips_encoded_on_the_fly_use_the_configured_encoder(tmp_path: Path) -> None:
    cfg = _cfg()
    cfg.data.text_encoder = _encoder(tmp_path, "mine")
    assert text_encoder_for(cfg, None, Storage()) == cfg.data.text_encoder
    assert text_encoder_for(_cfg(), None, Storage()) is None


def test_latents_out_of_reach_are_a_warning_not_a_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A checkpoint sampled away from its training data: sampling goes on with the default.
    gone = _cfg(str(tmp_path / "cluster-only"))
    assert text_encoder_for(gone, None, Storage()) is None
    unreadable = tmp_path / "odd"
    (unreadable / "job.json").mkdir(parents=True)  # reading it fails, not as "missing"
    with caplog.at_level("WARNING"):
        assert text_encoder_for(_cfg(str(unreadable)), None, Storage()) is None
    assert "cannot read" in caplog.text and str(unreadable) in caplog.text
