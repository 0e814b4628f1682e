"""Shared fixtures: a real S3 HTTP endpoint (moto's server on 127.0.0.1) and the sample videos."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infra.procs import free_port

# The training tests' fixtures (`latents`, `baseline`) and helpers, for every test module.
pytest_plugins = ["tests.train_runs"]

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
VIDEOS = SHARED / "data" / "videos"

# One extensions cache for every process a test starts, so DeepSpeed JIT-builds its ops once.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # local Ray on loopback only
# The cores shared out among the xdist workers (and the processes their tests start): at torch's
# default, each of two workers on a 2-core machine ran 2 OpenMP threads, and whichever trained in
# process (a VAE fixture, the demo's VAE) lost its cores to the other worker's threads: the 300-step
# VAE fixture took 247 s in the suite against 70 s alone (105 s alone on one thread). One thread
# per worker there cut the suite from 1479 s to 1381 s, cold extensions cache both times
# (BENCHMARKS.md, the suite's rows). Set before torch is imported, which reads it once.
if os.environ.get("PYTEST_XDIST_WORKER"):
    _workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _workers)))
# Without a GPU, Triton kernels run (and are tested) in Triton's interpreter on CPU tensors. It must
# be set before triton.jit decorates anything.
if not os.environ.get("CUDA_VISIBLE_DEVICES") and not Path("/dev/nvidia0").exists():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Dummy credentials for moto's server, set before any Ray worker starts so workers inherit them.
os.environ.update(
    AWS_ACCESS_KEY_ID="testing-key-id",
    AWS_SECRET_ACCESS_KEY="testing-secret-value",
    AWS_DEFAULT_REGION="us-east-1",
    AWS_EC2_METADATA_DISABLED="true",
)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """moto's S3 server over real HTTP on loopback; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: str) -> str:
    """A fresh, empty bucket; yields its name."""
    import uuid

    import boto3

    name = f"test-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def videos_dir() -> Path:
    if not VIDEOS.is_dir():
        pytest.skip(f"sample videos not found at {VIDEOS}")
    return VIDEOS


@pytest.fixture(scope="session")
def local_ray(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One local Ray for the whole session (jobs reuse an initialised Ray and leave it running)."""
    import logging
    import tempfile

    import ray

    temp = tempfile.mkdtemp(prefix="st-ray-", dir="/tmp")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        logging_level=logging.WARNING,
        _temp_dir=temp,
        _node_ip_address="127.0.0.1",
    )
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def real_shards(
    videos_dir: Path, tmp_path_factory: pytest.TempPathFactory, local_ray: None
) -> dict[str, Any]:
    """`spacetime shard` output of the 21 sample videos (shared by the pipeline and trainer tests).

    Made once per test run, not once per xdist worker (~1-2 min of the CPU each): the first worker
    to ask shards into the workers' common temp dir under a lock, the others read it. Every user
    only reads it."""
    import fcntl
    import json

    import webdataset as wds

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # the workers' base temps share one parent
        shared = shared.parent
    root = shared / "real-shards"
    root.mkdir(exist_ok=True)
    out, done = root / "clips", root / "summary.json"
    with (root / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not done.exists():
            from data_pipeline.config import ShardConfig
            from data_pipeline.job import run_shard
            from infra.storage_config import StorageConfig

            # A small pixel budget keeps encoding cheap; geometry and metadata are what is checked.
            cfg = ShardConfig(max_pixels=224 * 128, shard_max_bytes=2 * 1024 * 1024)
            summary = run_shard(str(videos_dir), str(out), cfg, StorageConfig())
            done.write_text(json.dumps(summary))
    summary = json.loads(done.read_text())
    samples = {}
    for shard in sorted(out.glob("clips-*.tar")):
        for s in wds.WebDataset(str(shard), shardshuffle=False):
            samples[s["__key__"]] = {
                "json": json.loads(s["json"]),
                "mp4": s["mp4"],
                "shard": shard.name,
            }
    records = {
        json.loads(p.read_text())["rel"]: json.loads(p.read_text())
        for p in (out / "_work" / "staging").glob("*.json")
    }
    return {"out": out, "summary": summary, "samples": samples, "records": records}


# --- Running the suite in two workers (pytest-xdist, `-n auto --dist loadfile` in pyproject.toml) --
# Over a third of the suite's wall time on a 2-core machine the CPU is idle: tests wait on other
# processes (DeepSpeed ranks, Ray, FFmpeg) starting, meeting and stopping. Two workers overlap one
# test's waits with another's work. Each module runs whole on one worker (its module-scoped fixtures
# are built once; the session-scoped ones, ~25 s, once per worker), and the modules that take
# minutes start first, so none of them is left to end the run alone while the other worker idles.
LONGEST_FIRST = (
    "test_train_deepspeed",
    "test_train_sp",
    "test_shapes_demo",
    "test_launch_two_hosts",
    "test_recaption",
    "test_vae_train",
    "test_long_runs",
    "test_train_launchers",
    "test_memory_model",
    "test_launch_ray",
    "test_pretrained_vae",
    "test_ray_connect",
    "test_curation",
    "test_stages",
    "test_lora",
    "test_shard_two_nodes",
)


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """Two workers at most: the heavy tests start two processes of their own (2-rank DeepSpeed,
    Ray head + worker), so more workers on a larger machine would mostly add memory."""
    return min(2, os.cpu_count() or 1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    # Stable: the order within a module is kept.
    items.sort(key=lambda it: rank.get(it.path.stem, len(rank)))
