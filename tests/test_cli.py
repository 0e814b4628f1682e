"""The `spacetime` entry point: help for every subcommand, config printing, honest stubs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from infra.cli import build_parser, main
from tests.conftest import REPO

SUBCOMMANDS = [
    "shard",
    "recaption",
    "train-vae",
    "encode",
    "train",
    "sample",
    "launch",
    "demo",
    "config",
    "vae",
    "export",
]


def test_top_level_help_lists_every_subcommand() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "infra.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for name in SUBCOMMANDS:
        assert name in out


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_subcommand_help_exits_zero(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([name, "--help"])
    assert e.value.code == 0
    assert name in capsys.readouterr().out


def test_console_script_installed() -> None:
    exe = Path(sys.executable).with_name("spacetime")
    assert exe.exists(), "pip install -e . should install the spacetime console script"
    r = subprocess.run([str(exe), "config", "presets"], capture_output=True, text=True)
    assert r.returncode == 0 and "tiny" in r.stdout


def test_config_show_and_validate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "show", "tiny", "--set", "run.seed=7"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["run"]["name"] == "tiny" and shown["run"]["seed"] == 7
    good = tmp_path / "good.yaml"
    good.write_text("run:\n  seed: 11\n")
    assert main(["config", "validate", str(good)]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["run"]["seed"] == 11
    bad = tmp_path / "bad.yaml"
    bad.write_text("run:\n  sede: 11\n")
    assert main(["config", "validate", str(bad)]) == 2


def test_launch_needs_a_train_command_and_prints_exactly(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["launch", "--dry-run"]) == 1
    assert main(["launch", "--nnodes", "2", "--dry-run", "--", "train"]) == 1  # no --master
    argv = [
        "launch",
        "--nnodes",
        "2",
        "--node-rank",
        "1",
        "--master",
        "10.0.0.1:29500",
        "--nproc-per-node",
        "4",
        "--iface",
        "eth1",
        "--run-id",
        "r1",
        "--dry-run",
        "--",
        "train",
        "--config",
        "my config.yaml",
    ]
    assert main(argv) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("OMP_NUM_THREADS=") and "GLOO_SOCKET_IFNAME=eth1" in line
    for part in (
        "--nnodes=2",
        "--nproc-per-node=4",
        "--node-rank=1",
        "--rdzv-endpoint=10.0.0.1:29500",
        "--rdzv-id=r1",
        "is_host=0",
        "-m infra.cli train --config 'my config.yaml'",
    ):
        assert part in line, part


def test_nodes_started_seconds_apart_agree_on_the_rendezvous_id(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per-node launches without --run-id (Kubernetes, by hand) start at different times; a
    time-based id split them into two rendezvous that never met (seen in CI)."""
    ids = []
    for rank, now in ((0, 1_796_176_920.9), (1, 1_796_176_921.2)):
        monkeypatch.setattr("time.time", lambda now=now: now)
        argv = ["launch", "--nnodes", "2", "--node-rank", str(rank), "--master", "[fd00::1]:29500"]
        assert main([*argv, "--dry-run", "--", "train"]) == 0
        line = capsys.readouterr().out
        ids.append(line.split("--rdzv-id=")[1].split()[0])
    assert ids[0] == ids[1] == "spacetime-fd00-1-29500", ids


HOSTILE = [
    "train",
    "--config",
    "my configs/c.yaml",
    "--set",
    "run.name=$(touch PWNED)",
    "`touch PWNED2`",
    "$HOME",
    "it's",
    "a\nb",
    "--set",
    "x=y z",
]


def _fake_bin(tmp_path: Path, scripts: dict[str, str]) -> dict[str, str]:
    """Stand-ins for cluster programs (srun, scontrol, ssh, python) on PATH; returns the env."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in scripts.items():
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def test_launch_slurm_script_passes_hostile_arguments_intact(tmp_path: Path) -> None:
    script = tmp_path / "job.sbatch"
    argv = [
        "launch",
        "--slurm",
        "--nnodes",
        "2",
        "--nproc-per-node",
        "8",
        "--gpus",
        "--run-id",
        "r2",
        "--slurm-script",
        str(script),
        "--",
        *HOSTILE,
    ]
    assert main(argv) == 0
    text = script.read_text()
    assert text.startswith("#!/bin/bash\n") and "#SBATCH --nodes=2" in text
    assert "#SBATCH --gpus-per-node=8" in text and "--rdzv-id=r2" in text
    assert "AWS_SECRET" not in text
    # Run it as a Slurm node would: srun runs its command, python records what it was given.
    record = tmp_path / "argv.json"
    env = _fake_bin(
        tmp_path,
        {
            "srun": '#!/bin/bash\nwhile [[ "$1" == --* ]]; do shift; done\nexec "$@"\n',
            "scontrol": "#!/bin/bash\necho node-a\n",
            "python": "#!/usr/bin/env python3\nimport json, sys\n"
            f"json.dump(sys.argv[1:], open({str(record)!r}, 'w'))\n",
        },
    )
    env |= {"SLURM_NNODES": "2", "SLURM_NODEID": "1", "SLURM_JOB_NODELIST": "node-[a-b]"}
    subprocess.run(["bash", str(script)], cwd=tmp_path, env=env, check=True, timeout=30)
    got = json.loads(record.read_text())
    assert got[got.index("infra.cli") + 1 :] == HOSTILE
    assert "--node-rank=1" in got and "--rdzv-endpoint=node-a:29500" in got
    assert not list(tmp_path.glob("PWNED*"))
    bad = ["launch", "--slurm", "--run-id", "x$(id)", "--dry-run", "--", "train"]
    assert main(bad) == 1


def test_launch_hostfile_commands_and_failures(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    hosts = tmp_path / "hosts"
    hosts.write_text("# cluster\nnode-a slots=2\nnode-b slots=2\n")
    argv = ["launch", "--hostfile", str(hosts), "--run-id", "r3"]
    assert main([*argv, "--print-only", "--", "train"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split()[:3] for ln in lines] == [["ssh", "--", "node-a"], ["ssh", "--", "node-b"]]
    assert "--node-rank=0" in lines[0] and "--node-rank=1" in lines[1]
    assert all("--rdzv-endpoint=node-a:29500" in ln for ln in lines)
    # A node whose ssh is killed by a signal fails the launch.
    env = _fake_bin(
        tmp_path,
        {
            "ssh": '#!/bin/bash\n[ "$1" = -- ] && shift\n[ "$1" = node-b ] && kill -9 $$\nexit 0\n',
        },
    )
    cmd = [sys.executable, "-m", "infra.cli", *argv, "--", "train"]
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "node-b killed by signal 9" in p.stderr, p.stderr[-2000:]
    for line in ("node-a gpus=2\n", "-oProxyCommand=touch${IFS}PWNED\n", "node-a;id\n"):
        hosts.write_text(line)
        assert main([*argv, "--print-only", "--", "train"]) == 1, line
    assert not list(tmp_path.glob("PWNED*"))


def test_launch_rayjob_manifest_and_ray_dry_run(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """The KubeRay RayJob (ray.io/v1 fields) runs `spacetime launch --ray-address auto` with the
    same training command as the per-node launch; Ray's dry run prints that command."""
    import shlex

    import yaml

    train = ["train", "--config", "my config.yaml", "--set", "train.steps=5"]
    out = tmp_path / "job.yaml"
    argv = [
        "launch",
        "--rayjob",
        str(out),
        "--nnodes",
        "3",
        "--nproc-per-node",
        "8",
        "--gpus",
        "--run-id",
        "rj",
        "--image",
        "reg/spacetime:1",
        "--",
        *train,
    ]
    assert main(argv) == 0
    job = yaml.safe_load(out.read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["metadata"]["name"] == "rj" and job["spec"]["shutdownAfterJobFinishes"] is True
    cluster = job["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"] == "reg/spacetime:1" and isinstance(head["name"], str)
    (group,) = cluster["workerGroupSpecs"]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 3
    assert isinstance(group["groupName"], str)
    worker = group["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert "AWS_" not in out.read_text()  # credentials come from a secret
    entry = shlex.split(job["spec"]["entrypoint"])
    assert entry[:4] == ["spacetime", "launch", "--ray-address", "auto"]
    assert entry[entry.index("--") + 1 :] == train
    assert entry[entry.index("--nnodes") + 1] == "3" and "--gpus" in entry

    capsys.readouterr()
    assert (
        main(
            ["launch", "--ray-address", "auto", "--nproc-per-node", "2", "--dry-run", "--", *train]
        )
        == 0
    )
    ray_cmd = shlex.split(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["launch", "--nproc-per-node", "2", "--dry-run", "--", *train]) == 0
    per_node = shlex.split(capsys.readouterr().out.strip().split(" ", 1)[1])
    assert ray_cmd[ray_cmd.index("infra.cli") :] == per_node[per_node.index("infra.cli") :]


def test_the_process_entry_tears_the_process_group_down_after_a_success() -> None:
    """`run` (what torchrun starts on every rank) destroys the process group before the
    interpreter exits, where gloo's threads could abort a rank that finished; not after a failure."""
    code = """
import sys
import torch.distributed as dist
import infra.cli
from infra.procs import free_port

def fake_main(code):
    def main():
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
        return code
    return main

for code in (0, 1):
    infra.cli.main = fake_main(code)
    got = infra.cli.run()
    print(code, got, dist.is_initialized())
    if dist.is_initialized():
        dist.destroy_process_group()
"""
    p = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.split("\n")[:2] == ["0 0 False", "1 1 True"], p.stdout
