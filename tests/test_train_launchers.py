"""Training under every launcher and its failures: `spacetime launch` relaunches a crashed node and
fails fast on a node that never joins, a frozen rank is ended by the watchdog, no rank outlives a
killed launcher, and DeepSpeed's own launcher runs the same entry."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from infra.procs import children_map, kill_tree
from tests.conftest import REPO, free_port
from tests.faults import fault_env
from tests.train_runs import ABORTED, _cmd, _env, _history, _run, _wait_latest

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]


def test_watchdog_ends_a_job_whose_peer_froze(latents: Path, tmp_path: Path) -> None:
    """SIGSTOP one rank (frozen, not dead): gloo would wait for it forever; the other rank's
    watchdog aborts, torchrun tears the job down, and --resume auto continues."""
    cmd = _cmd(
        2,
        latents,
        tmp_path,
        "frozen",
        2,
        "--set",
        "train.steps=100000",
        "--set",
        "train.watchdog_s=8",
    )
    log_file = (tmp_path / "frozen.log").open("w")
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=log_file, stderr=subprocess.STDOUT)
    latest = tmp_path / "frozen" / "checkpoints" / "latest"
    _wait_latest(latest, "step-00000002", proc)
    workers = sorted(children_map().get(proc.pid, []))
    assert len(workers) == 2
    os.kill(workers[1], signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        # Once rank 0's watchdog has fired, the frozen rank is let go: torchrun's SIGTERM would
        # otherwise wait out its fixed 30 s grace before SIGKILL (torchrun's teardown, not ours).
        # Rank 0 notices by whichever limit runs out first, its own idle time or rank 1's silent
        # heartbeat (both 8 s, started about a step apart), so either message counts.
        while ABORTED not in (tmp_path / "frozen.log").read_text():
            assert proc.poll() is None and time.monotonic() - t0 < 90
            time.sleep(0.5)
        detected = time.monotonic() - t0
        os.kill(workers[1], signal.SIGCONT)
        proc.wait(timeout=120)
    finally:
        kill_tree(proc.pid)
        log_file.close()
    out = (tmp_path / "frozen.log").read_text()
    assert proc.returncode != 0 and detected < 60, detected
    assert re.search(
        r"watchdog: rank 0( made no training progress|'s neighbour rank 1 sent no)", out
    )
    log = _run(
        [*_cmd(2, latents, tmp_path, "frozen", 2, "--set", "train.steps=12"), "--resume", "auto"]
    )
    assert "resumed from step-" in log


def test_launch_max_restarts_relaunches_and_resumes(
    latents: Path, baseline: tuple[Path, str], tmp_path: Path
) -> None:
    """A rank is killed inside the save of step 6; `spacetime launch --max-restarts 1` relaunches
    the node with --resume auto and the run ends with the uninterrupted run's losses."""
    train = _cmd(1, latents, tmp_path, "relaunch", 2)[3:]  # the `train ...` arguments
    cmd = [
        sys.executable,
        "-m",
        "infra.cli",
        "launch",
        "--nproc-per-node",
        "2",
        "--max-restarts",
        "1",
        "--",
        *train,
    ]
    log = _run(cmd, env=fault_env("save:written@6"))
    assert "relaunching from the latest checkpoint" in log and "resumed from step-00000004" in log
    got, ref = _history(tmp_path, "relaunch"), _history(*baseline)
    assert torch.allclose(torch.tensor(got), torch.tensor(ref), rtol=1e-4, atol=1e-6)


def _descendants(pid: int) -> set[int]:
    children, todo, out = children_map(), [pid], set()
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def test_workers_exit_when_their_launcher_is_killed(latents: Path, tmp_path: Path) -> None:
    train = _cmd(1, latents, tmp_path, "orphans", 2, "--set", "train.steps=100000")[3:]
    cmd = [sys.executable, "-m", "infra.cli", "launch", "--nproc-per-node", "2", "--", *train]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True
    )
    workers: set[int] = set()
    try:
        _wait_latest(tmp_path / "orphans" / "checkpoints" / "latest", "step-00000002", proc)
        workers = _descendants(proc.pid)
        assert len(workers) >= 3  # torchrun and its two ranks (and their reader processes)
        os.kill(proc.pid, signal.SIGKILL)  # the launcher alone, as an OOM killer would
        proc.wait()
        deadline = time.monotonic() + 20
        alive = workers
        while alive and time.monotonic() < deadline:
            time.sleep(0.2)
            alive = {p for p in alive if Path(f"/proc/{p}").exists() and _not_zombie(p)}
        assert not alive, f"still running {time.monotonic() - deadline + 20:.0f}s after: {alive}"
    finally:
        for p in workers | {proc.pid}:  # whatever the test left, it does not leave running
            kill_tree(p)


def _not_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_launch_node_that_never_joins_fails_fast_and_says_so(latents: Path, tmp_path: Path) -> None:
    train = _cmd(1, latents, tmp_path, "alone", 2)[3:]
    cmd = [
        sys.executable,
        "-m",
        "infra.cli",
        "launch",
        "--nnodes",
        "2",
        "--node-rank",
        "0",
        "--master",
        f"127.0.0.1:{free_port()}",
        "--join-timeout",
        "10",
        "--",
        *train,
    ]
    t0 = time.monotonic()
    p = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and time.monotonic() - t0 < 60
    assert "not every node joined" in p.stderr and "this is node 0 of 2" in p.stderr, p.stderr[
        -2000:
    ]


def test_deepspeed_launcher_runs_the_same_entry(
    latents: Path, baseline: tuple[Path, str], tmp_path: Path
) -> None:
    """The `deepspeed` launcher (2 CPU ranks) runs `-m infra.cli train` and matches one rank."""
    train = _cmd(1, latents, tmp_path, "ds", 2)[3:]
    cmd = [
        str(Path(sys.executable).with_name("deepspeed")),
        "--num_gpus",
        "2",
        "--master_port",
        str(free_port()),
        "--no_local_rank",
        "--module",
        "infra.cli",
        *train,
    ]
    log = _run(cmd)
    assert "world 2" in log
    got, ref = _history(tmp_path, "ds"), _history(*baseline)
    assert torch.allclose(torch.tensor(got), torch.tensor(ref), rtol=1e-4, atol=1e-6), (got, ref)
