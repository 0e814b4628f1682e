"""`--ray-address` against a real `ray start --head`, with and without Ray's token authentication:
the job connects either way, and says in one line what is wrong when it cannot."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.procs import free_port
from tests.conftest import REPO
from tests.media import moving_frames, write_video

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]
RAY = str(Path(sys.executable).with_name("ray"))


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    return env | {"HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0", **extra}


@contextlib.contextmanager
def head(home: Path, tmp: Path, **env: str) -> Iterator[str]:
    """`ray start --head` as a user would type it (token auth on when ~/.ray/auth_token exists)."""
    port = free_port()
    temp = Path(f"/tmp/st-rc-{secrets.token_hex(4)}")
    argv = [
        RAY,
        "start",
        "--head",
        f"--port={port}",
        "--node-ip-address=127.0.0.1",
        "--include-dashboard=false",
        "--num-cpus=1",
        f"--temp-dir={temp}",
        "--block",
    ]
    with open(tmp / f"head-{port}.log", "w") as f:
        proc = subprocess.Popen(
            argv, env=_env(home, **env), stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 60
        while "Ray runtime started" not in (tmp / f"head-{port}.log").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, (
                tmp / f"head-{port}.log"
            ).read_text()[-2000:]
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        subprocess.run(["rm", "-rf", str(temp)], check=False)


def shard(address: str, home: Path, tmp: Path, out: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable,
        "-m",
        "infra.cli",
        "shard",
        "--input",
        str(tmp / "in"),
        "--output",
        str(tmp / out),
        "--ray-address",
        address,
        "--set",
        "shard.max_pixels=12288",
        "--set",
        "shard.min_side=32",
    ]
    return subprocess.run(
        cmd, cwd=REPO, env=_env(home), capture_output=True, text=True, timeout=300
    )


def test_jobs_connect_to_clusters_with_and_without_token_auth(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    write_video(tmp_path / "in" / "v.mp4", moving_frames(96, 64, 30, seed=1))
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text(secrets.token_hex(16))
    bare = tmp_path / "bare-home"
    bare.mkdir()

    with head(home, tmp_path) as address:  # a token on the machine: Ray turns token auth on
        r = shard(address, home, tmp_path, "o1")
        assert r.returncode == 0, r.stderr[-3000:]
        assert "uses token authentication" in r.stderr
        r = shard(address, bare, tmp_path, "o2")  # a client without the token: one clear line
        assert r.returncode == 1 and "Traceback" not in r.stderr
        assert f"the Ray cluster at {address} requires token authentication" in r.stderr
        assert "RAY_AUTH_TOKEN" in r.stderr
    with head(home, tmp_path, RAY_AUTH_MODE="disabled") as address:
        r = shard(address, home, tmp_path, "o3")
        assert r.returncode == 0, r.stderr[-3000:]
    dead = f"127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    r = shard(dead, home, tmp_path, "o4")
    assert r.returncode == 1 and "Traceback" not in r.stderr and time.monotonic() - t0 < 60
    assert f"cannot reach the Ray cluster at {dead}" in r.stderr
