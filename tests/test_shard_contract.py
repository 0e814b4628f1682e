"""infra.shards writes tars by hand (tarfile) but exactly as webdataset's TarWriter would."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import webdataset as wds

from infra.shards import iter_samples, write_samples
from infra.storage import Storage


def test_written_tars_equal_webdataset_tarwriter_bytes_and_read_back(tmp_path: Path) -> None:
    samples = [
        {"__key__": f"src{i:02d}-s000-c01", "mp4": os.urandom(700 + i), "json": b"{}", "txt": "é"}
        for i in range(4)
    ]
    assert write_samples(str(tmp_path / "ours.tar"), samples, Storage()) == 4
    with (tmp_path / "wds.tar").open("wb") as f:
        writer = wds.TarWriter(f, mtime=0, user="", group="")
        for s in samples:
            writer.write(s)
        writer.close()
    assert (tmp_path / "ours.tar").read_bytes() == (tmp_path / "wds.tar").read_bytes()
    back = list(iter_samples(str(tmp_path / "ours.tar"), Storage()))
    assert [s["__key__"] for s in back] == [s["__key__"] for s in samples]
    assert back[1]["mp4"] == samples[1]["mp4"] and back[0]["txt"] == "é".encode()


def test_a_value_that_is_not_bytes_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"k1\.json: a sample's values must be bytes or str"):
        write_samples(str(tmp_path / "x.tar"), [{"__key__": "k1", "json": {"a": 1}}], Storage())
    assert not (tmp_path / "x.tar").exists()  # nothing half-written is published
