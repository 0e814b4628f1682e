"""Bad files and bad settings get one clear error naming the file or the setting (no traceback)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from infra.cli import main
from infra.shards import ShardError, iter_samples, write_samples
from infra.storage import Storage
from trainer.data.raw import clip_index
from trainer.vae.config import VAEConfig


def _shard(path: Path, n: int = 3) -> Path:
    write_samples(
        str(path),
        ({"__key__": f"k{i}", "mp4": b"x" * 5000, "json": b"{}"} for i in range(n)),
        Storage(),
    )
    return path


def test_a_truncated_shard_is_named(tmp_path: Path) -> None:
    full = _shard(tmp_path / "clips-000000.tar").read_bytes()
    cut = tmp_path / "clips-000001.tar"
    cut.write_bytes(full[: len(full) // 2])
    with pytest.raises(ShardError, match=r"clips-000001.tar: truncated or corrupt tar"):
        list(iter_samples(str(cut), Storage()))


def test_a_member_without_an_extension_is_named(tmp_path: Path) -> None:
    path = tmp_path / "clips-000000.tar"
    with tarfile.open(path, "w") as tf:
        info = tarfile.TarInfo("README")
        info.size = 2
        tf.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(ShardError, match=r"clips-000000.tar: member 'README' has no extension"):
        list(iter_samples(str(path), Storage()))


def test_a_manifest_missing_a_column_is_named(tmp_path: Path) -> None:
    _shard(tmp_path / "clips-000000.tar")
    pq.write_table(
        pa.table({"key": ["k0"], "shard": ["clips-000000.tar"]}), tmp_path / "manifest.parquet"
    )
    with pytest.raises(
        ValueError, match=r"manifest.parquet: the manifest lacks column\(s\) frames"
    ):
        clip_index(str(tmp_path), Storage(), VAEConfig.named("tiny"), 17)


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--dry-run", "--config", "."],
        ["train", "--dry-run", "--set", "train.optim.lr=nan"],
        ["train", "--dry-run", "--set", "train.optim.warmup_steps=-1"],
        ["train", "--dry-run", "--set", "train.data.workers=-2"],
        ["train-vae", "--shards", "x", "--output", "y", "--set", "vae_train.checkpoint_every=0"],
        ["shard", "--input", "x", "--output", "y", "--set", "shard.max_input_bytes=0"],
        ["shard", "--input", "x", "--output", "y", "--set", "shard.num_workers=-1"],
        ["recaption", "--shards", "x", "--output", "y", "--set", "recaption.workers=-1"],
    ],
)
def test_bad_settings_are_config_errors(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    setting = argv[-1].split("=")[0].rsplit(".", 1)[-1] if "--set" in argv else "is a folder"
    assert setting in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags", [["--frames", "-3"], ["--height", "0"], ["--steps", "0"], ["--guidance", "nan"]]
)
def test_bad_sample_settings_are_refused_before_loading(
    tmp_path: Path, flags: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "sample",
        "--checkpoint",
        str(tmp_path),
        "--vae",
        str(tmp_path),
        "--prompt",
        "a",
        "--output",
        str(tmp_path / "o"),
        *flags,
    ]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert flags[0].lstrip("-") in err and "not a checkpoint" not in err, err
