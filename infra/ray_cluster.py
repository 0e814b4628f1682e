"""Connecting to Ray: an existing cluster, or a private local one started and stopped by the job."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from infra.errors import JobError

log = logging.getLogger(__name__)

# Ray puts unix sockets under its temp dir; their paths must stay under ~107 bytes.
_MAX_TEMP_DIR_LEN = 40


def _short_temp_dir(work_dir: Path) -> tuple[str, str | None]:
    """A short path for Ray's temp dir whose files live under `work_dir`: the folder itself, or a
    symlink to it inside a private (0700) folder of the system temp dir, which no other local user
    can take over (a fixed /tmp name could be). Returns (path, that private folder or None)."""
    target = (work_dir / "ray").resolve()
    target.mkdir(parents=True, exist_ok=True)
    if len(str(target)) <= _MAX_TEMP_DIR_LEN:
        return str(target), None
    private = tempfile.mkdtemp(prefix="st-ray-")
    link = Path(private) / "r"
    link.symlink_to(target, target_is_directory=True)
    return str(link), private


def local_work_dir(output: str) -> Path:
    """Where a job keeps local working files (Ray's temp dir): `{output}/_work` for a local output;
    for an s3:// one, a folder named after the output in this user's own cache (not a shared,
    guessable /tmp path)."""
    if output.startswith("s3://"):
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        return cache / "spacetime" / "work" / hashlib.sha1(output.encode()).hexdigest()[:10]
    return Path(output) / "_work"


def loopback_only() -> None:
    """Makes a local Ray bind to 127.0.0.1. Passing `_node_ip_address="127.0.0.1"` is not enough:
    Ray swaps loopback for the machine's external address unless its cluster support is off
    (ray_constants.ENABLE_RAY_CLUSTER, read from this variable when ray is first imported)."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


_PROBE = """
import json, sys
from ray._raylet import GcsClient
try:
    GcsClient(address=sys.argv[1]).internal_kv_get(b"spacetime-probe", None, timeout=10)
    print(json.dumps({"auth": False}))
except Exception as e:
    print(json.dumps({"auth": type(e).__name__ == "AuthenticationError", "error": str(e)[:300]}))
"""


def _token_available() -> bool:
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    return bool(os.environ.get("RAY_AUTH_TOKEN")) or Path(path).is_file()


def prepare_connection(address: str) -> None:
    """Checks that `address` answers and matches this process's Ray authentication mode to the
    cluster's. `ray start` turns token authentication on by itself when it finds a token
    (~/.ray/auth_token, left by any earlier Ray), but a client connects without one unless
    RAY_AUTH_MODE=token is set, and then fails after ~20 s with an address the user never typed.
    Ray has no public call for "what does this cluster require", so a child process asks the GCS
    once without a token (the mode is cached per process). JobError when the cluster cannot be
    used, with what to set."""
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except (OSError, ValueError) as e:
        raise JobError(
            f"cannot reach the Ray cluster at {address}: {e}. Check the head's address and port "
            "(`ray status` on the head prints them)."
        ) from None
    if os.environ.get("RAY_AUTH_MODE"):
        return  # the user chose; respect it
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    try:
        out = subprocess.run(
            [sys.executable, "-c", _PROBE, address],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        probe = json.loads(out.stdout.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, json.JSONDecodeError, IndexError):
        return  # no verdict: let ray.init try and report
    if not probe["auth"]:
        return
    if not _token_available():
        raise JobError(
            f"the Ray cluster at {address} requires token authentication and this machine has no "
            "token: set RAY_AUTH_TOKEN to the cluster's token (print it on the head with `ray "
            "get-auth-token`), or RAY_AUTH_TOKEN_PATH to a file holding it."
        )
    log.info(
        "the Ray cluster at %s uses token authentication: connecting with RAY_AUTH_MODE=token",
        address,
    )
    os.environ["RAY_AUTH_MODE"] = "token"
    if "ray._raylet" in sys.modules:
        # Ray read the mode into its cached config when it was imported; refresh it as Ray's own
        # `ray start` does when it turns token authentication on.
        from ray._raylet import Config

        Config.initialize("")


@contextlib.contextmanager
def ray_session(
    address: str | None, work_dir: Path, num_cpus: int | None = None
) -> Iterator[dict[str, float]]:
    """Yields the cluster's resources. With no address, starts a local Ray bound to 127.0.0.1 with
    usage reporting off and its temp dir under `work_dir`, and shuts it down afterwards. A Ray
    already initialised in this process (tests, notebooks) is reused and left running."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not address:
        loopback_only()
    import ray  # read after loopback_only() set Ray's environment

    if ray.is_initialized():
        yield ray.cluster_resources()
        return
    private = None
    if address:
        if address != "auto":
            prepare_connection(address)
        try:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
        except Exception as e:  # Ray raises ConnectionError, AuthenticationError, RuntimeError...
            reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise JobError(
                f"could not connect to the Ray cluster at {address}: {reason}. If the cluster uses "
                "token authentication, set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (`ray "
                "get-auth-token` on the head)."
            ) from None
        log.info("connected to Ray cluster at %s: %s", address, _describe(ray.cluster_resources()))
    else:
        temp_dir, private = _short_temp_dir(work_dir)
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=False,
            logging_level=logging.WARNING,
            _temp_dir=temp_dir,
            _node_ip_address="127.0.0.1",
        )
        log.info(
            "started local Ray (%s), temp dir %s", _describe(ray.cluster_resources()), temp_dir
        )
    try:
        yield ray.cluster_resources()
    finally:
        ray.shutdown()
        if private:
            shutil.rmtree(private, ignore_errors=True)


def _describe(res: dict[str, float]) -> str:
    return f"{res.get('CPU', 0):g} CPU, {res.get('GPU', 0):g} GPU, {len([k for k in res if k.startswith('node:') and 'internal' not in k])} node(s)"
