"""Connecting to Ray: an existing cluster, or a private local one started and stopped by the job."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

# Ray puts unix sockets under its temp dir; their paths must stay under ~107 bytes.
_MAX_TEMP_DIR_LEN = 40


def _short_temp_dir(work_dir: Path) -> str:
    """A short path for Ray's temp dir whose files live under `work_dir` (via a symlink if needed)."""
    target = (work_dir / "ray").resolve()
    target.mkdir(parents=True, exist_ok=True)
    if len(str(target)) <= _MAX_TEMP_DIR_LEN:
        return str(target)
    link = (
        Path(tempfile.gettempdir())
        / f"st-ray-{hashlib.sha1(str(target).encode()).hexdigest()[:10]}"
    )
    if link.is_symlink() and os.readlink(link) != str(target):
        link.unlink()
    if not link.exists():
        link.symlink_to(target, target_is_directory=True)
    return str(link)


def local_work_dir(output: str) -> Path:
    """Where a job keeps local working files (Ray's temp dir): `{output}/_work` for a local output,
    a folder under the system temp dir named after the output for an s3:// one."""
    if output.startswith("s3://"):
        return (
            Path(tempfile.gettempdir())
            / "spacetime-work"
            / hashlib.sha1(output.encode()).hexdigest()[:10]
        )
    return Path(output) / "_work"


def loopback_only() -> None:
    """Makes a local Ray bind to 127.0.0.1. Passing `_node_ip_address="127.0.0.1"` is not enough:
    Ray swaps loopback for the machine's external address unless its cluster support is off
    (ray_constants.ENABLE_RAY_CLUSTER, read from this variable when ray is first imported)."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


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
    import ray

    if ray.is_initialized():
        yield ray.cluster_resources()
        return
    if address:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
        log.info("connected to Ray cluster at %s: %s", address, _describe(ray.cluster_resources()))
    else:
        temp_dir = _short_temp_dir(work_dir)
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


def _describe(res: dict[str, float]) -> str:
    return f"{res.get('CPU', 0):g} CPU, {res.get('GPU', 0):g} GPU, {len([k for k in res if k.startswith('node:') and 'internal' not in k])} node(s)"
