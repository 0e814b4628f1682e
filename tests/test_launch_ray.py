"""`spacetime launch --ray-address`: the training entry under Ray Train (TorchTrainer, gloo) on a
real 2-node Ray cluster (two network namespaces) trains the same losses as torchrun, on both hosts,
without handing the driver's credentials to Ray; torchrun continues its checkpoint bit-exactly."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch

from tests.netns import can_make_namespaces, ray_cluster, ray_env, two_hosts
from tests.train_runs import _cmd, _history, _run

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess, pytest.mark.root]


def test_ray_train_across_two_nodes_matches_torchrun_and_leaks_no_secret(
    latents: Path,
    baseline: tuple[Path, str],
    tmp_path: Path,
) -> None:
    reason = can_make_namespaces()
    if reason:
        pytest.fail(f"this test must run (CI runs as root): {reason}")
    # A watchdog limit: the ranks beat in the store Ray Train's process group was set up with.
    train = _cmd(
        1, latents, tmp_path, "ray2", 2, "--set", "train.keep_checkpoints=10",
        "--set", "train.watchdog_s=120",
    )[3:]  # fmt: skip
    secret = f"secret-{uuid.uuid4().hex}"
    with two_hosts() as hosts:
        # One CPU slot per node, so the two workers land on different hosts; each node tells gloo
        # its own interface, as a cluster's per-node environment would.
        node_env = tuple({"GLOO_SOCKET_IFNAME": v, "OMP_NUM_THREADS": "1"} for v in hosts.veth)
        with ray_cluster(hosts, tmp_path / "logs", node_env=node_env) as head:  # type: ignore[arg-type]
            launch = [
                sys.executable,
                "-m",
                "infra.cli",
                "launch",
                "--ray-address",
                head,
                "--ray-storage",
                str(tmp_path / "ray"),
                "--nnodes",
                "2",
                "--nproc-per-node",
                "1",
                "--",
                *train,
            ]
            env = ray_env({"AWS_SESSION_TOKEN": secret})  # the driver's own credentials
            for k in ("GLOO_SOCKET_IFNAME", "OMP_NUM_THREADS"):
                env.pop(k, None)  # the driver's would override each node's own
            r = subprocess.run(
                hosts.cmd(0, launch), env=env, capture_output=True, text=True, timeout=400
            )
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-4000:]
    assert "Ray Train run finished" in log and "world 2" in log
    assert "heartbeat: no store" not in log and "beats in the store" in log, log[-4000:]
    for addr in hosts.addr:  # one rank on each host
        assert f"on node {addr}" in log, log[-4000:]
    got, ref = _history(tmp_path, "ray2"), _history(*baseline)
    assert torch.allclose(torch.tensor(got), torch.tensor(ref), rtol=1e-4, atol=1e-6), (got, ref)
    # Nothing Ray wrote on either node holds the driver's secret (runtime_env_agent.log would).
    logs = [p for p in (tmp_path / "logs").rglob("*") if p.is_file()]
    assert any("runtime_env" in p.name for p in logs) and len(logs) > 10
    assert not [p for p in logs if secret.encode() in p.read_bytes()]

    # torchrun (2 ranks, same world size: bit-exact) continues from Ray's step-6 checkpoint.
    step6 = tmp_path / "ray2" / "checkpoints" / "step-00000006"
    resumed = _run(_cmd(2, latents, tmp_path, "ray2", 2, "--resume", str(step6)))
    assert "resumed from step-00000006" in resumed
    assert _history(tmp_path, "ray2") == got
