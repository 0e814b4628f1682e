"""`spacetime shard` on a real 2-node Ray cluster (two network namespaces): same output as local."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from data_pipeline.config import ShardConfig
from data_pipeline.job import run_shard
from infra.storage_config import StorageConfig
from tests.netns import can_make_namespaces, ray_cluster, ray_env, two_hosts
from tests.test_shard_resume_s3 import SETTINGS, fingerprint, make_videos

pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.multiprocess]


def test_two_node_cluster_matches_local_run(tmp_path: Path, local_ray: None) -> None:
    reason = can_make_namespaces()
    if reason:
        pytest.fail(f"this test must run (CI runs as root): {reason}")
    videos = make_videos(tmp_path / "in", 8)
    local = tmp_path / "local"
    run_shard(str(videos), str(local), ShardConfig(**SETTINGS), StorageConfig())

    out = tmp_path / "cluster"
    with two_hosts() as hosts, ray_cluster(hosts, tmp_path / "ray-logs") as head:
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
            hosts.cmd(0, cmd), env=ray_env(), capture_output=True, text=True, timeout=300
        )
        assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["nodes"]) == sorted(hosts.addr)  # work ran on both hosts
    assert fingerprint(out) == fingerprint(local)
