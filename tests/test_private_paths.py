"""Local working paths another user of the machine cannot take over: no fixed names in /tmp."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from infra.ray_cluster import _short_temp_dir, local_work_dir


def test_s3_outputs_work_in_this_users_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    work = local_work_dir("s3://bucket/clips")
    assert work.is_relative_to(tmp_path / "cache") and work != local_work_dir("s3://bucket/other")
    assert local_work_dir(str(tmp_path / "out")) == tmp_path / "out" / "_work"


def test_a_long_ray_temp_dir_is_reached_through_a_private_folder(tmp_path: Path) -> None:
    deep = tmp_path / ("x" * 60) / "work"  # too long for Ray's unix socket paths
    short, private = _short_temp_dir(deep)
    assert private is not None and Path(short).resolve() == (deep / "ray").resolve()
    mode = stat.S_IMODE(os.stat(private).st_mode)
    assert mode == 0o700 and os.stat(private).st_uid == os.getuid()
    _, private2 = _short_temp_dir(deep)
    assert private2 != private  # a fresh folder each time, never a guessable name
    for p in (private, private2):
        for link in Path(p).iterdir():
            link.unlink()
        os.rmdir(p)
