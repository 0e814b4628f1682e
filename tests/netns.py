"""Two test hosts on one machine: network namespaces joined by a veth pair (needs root).

Addresses are private and exist only inside the two namespaces; nothing is routed out.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


def can_make_namespaces() -> str | None:
    """None if namespaces can be made here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class TwoHosts:
    def __init__(self) -> None:
        tag = f"{os.getpid() % 10000:04d}"
        self.ns = (f"st{tag}a", f"st{tag}b")
        self.veth = (f"st{tag}va", f"st{tag}vb")
        subnet = 10 + os.getpid() % 200
        self.addr = (f"10.213.{subnet}.1", f"10.213.{subnet}.2")

    def up(self) -> None:
        for ns in self.ns:
            _ip("netns", "add", ns)
        _ip("link", "add", self.veth[0], "type", "veth", "peer", "name", self.veth[1])
        for ns, veth, addr in zip(self.ns, self.veth, self.addr, strict=True):
            _ip("link", "set", veth, "netns", ns)
            _ip("netns", "exec", ns, "ip", "addr", "add", f"{addr}/24", "dev", veth)
            _ip("netns", "exec", ns, "ip", "link", "set", veth, "up")
            _ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")

    def down(self) -> None:
        for ns in self.ns:
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("netns", "del", ns)

    def cmd(self, host: int, argv: list[str]) -> list[str]:
        """`argv` run inside host 0 or 1."""
        return ["ip", "netns", "exec", self.ns[host], *argv]


@contextlib.contextmanager
def two_hosts() -> Iterator[TwoHosts]:
    hosts = TwoHosts()
    hosts.down()
    hosts.up()
    try:
        yield hosts
    finally:
        hosts.down()


RAY = str(Path(sys.executable).with_name("ray"))


def ray_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)  # a real cluster: not loopback-only
    # Ray 2.60 turns token auth on for a head that finds ~/.ray/auth_token (left by any earlier
    # local ray.init) but not for a joining worker, which is then refused; the namespaces are
    # private to the test, so one explicit mode for every process.
    env["RAY_AUTH_MODE"] = "disabled"
    return env | (extra or {})


@contextlib.contextmanager
def ray_cluster(
    hosts: TwoHosts,
    log_dir: Path,
    cpus: int = 1,
    node_env: tuple[dict[str, str], dict[str, str]] = ({}, {}),
) -> Iterator[str]:
    """A real 2-node Ray cluster: the head on host 0, a worker on host 1, `cpus` CPU slots each,
    `node_env[i]` in node i's environment (its workers inherit it). Yields the head's address once
    both nodes are up; stops both afterwards and keeps their session logs in `log_dir/node{i}/`."""
    procs: list[subprocess.Popen] = []
    temps = [tempfile.mkdtemp(prefix="st-rn-", dir="/tmp") for _ in range(2)]
    head = f"{hosts.addr[0]}:6379"
    common = [f"--num-cpus={cpus}", "--block", "--disable-usage-stats"]
    starts = (
        ["--head", "--port=6379", "--include-dashboard=false"],
        [f"--address={head}"],
    )
    log_dir.mkdir(parents=True, exist_ok=True)
    try:
        for i in range(2):
            argv = [
                RAY,
                "start",
                *starts[i],
                f"--node-ip-address={hosts.addr[i]}",
                f"--temp-dir={temps[i]}",
                *common,
            ]
            with open(log_dir / f"ray-node{i}.log", "w") as f:
                procs.append(
                    subprocess.Popen(
                        hosts.cmd(i, argv),
                        env=ray_env(node_env[i]),
                        start_new_session=True,
                        stdout=f,
                        stderr=subprocess.STDOUT,
                    )
                )
            if i == 0:
                time.sleep(6)  # the worker's first connection attempt fails if the GCS is not up
        deadline = time.monotonic() + 120
        while True:
            status = subprocess.run(
                hosts.cmd(0, [RAY, "status", f"--address={head}"]),
                env=ray_env(),
                capture_output=True,
                text=True,
            )
            if status.stdout.count("node_") >= 2 or time.monotonic() > deadline:
                break
            time.sleep(2)
        logs = "".join(p.read_text()[-2000:] for p in sorted(log_dir.glob("ray-node*.log")))
        assert status.stdout.count("node_") >= 2, status.stdout + status.stderr + logs
        yield head
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        for i, temp in enumerate(temps):
            for logs in Path(temp).glob("session_*/logs"):
                shutil.copytree(logs, log_dir / f"node{i}", dirs_exist_ok=True)
            shutil.rmtree(temp, ignore_errors=True)
