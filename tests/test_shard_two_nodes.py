"""`spacetime shard` on a real 2-node Ray cluster (two network namespaces): same output as local."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from data_pipeline.config import ShardConfig
from data_pipeline.job import run_shard
from infra.storage import StorageConfig
from tests.netns import can_make_namespaces, two_hosts
from tests.test_shard_resume_s3 import SETTINGS, fingerprint, make_videos

pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.multiprocess]

RAY = str(Path(sys.executable).with_name("ray"))


def _env() -> dict[str, str]:
    env = {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)  # a real cluster: not loopback-only
    return env


def test_two_node_cluster_matches_local_run(tmp_path: Path, local_ray: None) -> None:
    reason = can_make_namespaces()
    if reason:
        pytest.fail(f"this test must run (CI runs as root): {reason}")
    videos = make_videos(tmp_path / "in", 8)
    local = tmp_path / "local"
    run_shard(str(videos), str(local), ShardConfig(**SETTINGS), StorageConfig())

    procs: list[subprocess.Popen] = []
    temps = [tempfile.mkdtemp(prefix="st-rn-", dir="/tmp") for _ in range(2)]
    log_dir = tmp_path / "ray-logs"
    log_dir.mkdir()
    with (
        two_hosts() as hosts,
        open(log_dir / "head.log", "w") as head_log,
        open(log_dir / "worker.log", "w") as worker_log,
    ):
        head = f"{hosts.addr[0]}:6379"
        try:
            common = ["--num-cpus=1", "--block", "--disable-usage-stats"]
            procs.append(subprocess.Popen(
                hosts.cmd(0, [RAY, "start", "--head", f"--node-ip-address={hosts.addr[0]}", "--port=6379", "--include-dashboard=false", f"--temp-dir={temps[0]}", *common]),
                env=_env(), start_new_session=True, stdout=head_log, stderr=subprocess.STDOUT,
            ))  # fmt: skip
            time.sleep(6)
            procs.append(subprocess.Popen(
                hosts.cmd(1, [RAY, "start", f"--address={head}", f"--node-ip-address={hosts.addr[1]}", f"--temp-dir={temps[1]}", *common]),
                env=_env(), start_new_session=True, stdout=worker_log, stderr=subprocess.STDOUT,
            ))  # fmt: skip
            out = tmp_path / "cluster"
            deadline = time.monotonic() + 120
            while True:
                status = subprocess.run(
                    hosts.cmd(0, [RAY, "status", f"--address={head}"]),
                    env=_env(),
                    capture_output=True,
                    text=True,
                )
                if status.stdout.count("node_") >= 2 or time.monotonic() > deadline:
                    break
                time.sleep(2)
            logs = "".join(p.read_text()[-2000:] for p in sorted(log_dir.iterdir()))
            assert status.stdout.count("node_") >= 2, status.stdout + status.stderr + logs
            cmd = [
                sys.executable,
                "-m",
                "infra.cli",
                "shard",
                "--input",
                str(videos),
                "--output",
                str(out),
                "--ray-address",
                head,
            ]
            cmd += [f"--set=shard.{k}={v}" for k, v in SETTINGS.items()]
            r = subprocess.run(
                hosts.cmd(0, cmd), env=_env(), capture_output=True, text=True, timeout=300
            )
            assert r.returncode == 0, r.stderr[-3000:]
        finally:
            for p in procs:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["nodes"]) == sorted(hosts.addr)  # work ran on both hosts
    assert fingerprint(out) == fingerprint(local)
