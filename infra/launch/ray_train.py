"""`spacetime launch --ray-address ADDR`: the same training entry under Ray Train, and the KubeRay
RayJob manifest that runs it on Kubernetes.

Ray Train's TorchTrainer starts one worker per GPU (or per CPU slot on CPU), sets up the process
group (NCCL or gloo) and the usual RANK/WORLD_SIZE/LOCAL_RANK variables; each worker then runs the
exact `spacetime train ...` (or `train-vae`) command line, through `infra.cli.main`, which finds
the process group already up. Checkpoints are the trainer's own (run.output_dir), so a run started
under Ray resumes under torchrun and the other way round. A failed attempt is relaunched with
`--resume auto` up to `--max-restarts` times (Ray Train's own retry is left off, as torchrun's is,
so that every launcher restarts the same way).

Credentials never travel with the job: Ray writes a job's runtime environment in clear text into
its session logs (readable by every local user) and shows it on its dashboard. Workers find
credentials through the standard AWS chain of their own node (instance or pod role, environment,
~/.aws), as every other process on the cluster does.
"""

from __future__ import annotations

import logging
import os
import runpy
import shlex
import sys
from pathlib import Path
from typing import Any

from infra.launch.node import ENTRY, with_resume
from infra.log import setup_logging
from infra.ray_cluster import ray_session

log = logging.getLogger(__name__)

# Settings the workers need from the driver; never credentials (see above).
PASS_PREFIXES = ("OMP_NUM_THREADS", "GLOO_SOCKET_IFNAME", "NCCL_", "TORCH_EXTENSIONS_DIR")


def worker_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(PASS_PREFIXES)}


def run_entry(argv: list[str]) -> int:
    """Runs `python -m infra.cli ARGV` in this process, as torchrun runs it in each rank: the same
    module by name, so the launcher never imports the command line above it."""
    saved = sys.argv
    sys.argv = [ENTRY, *argv]
    try:
        runpy.run_module(ENTRY, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = saved
    return 0


def _worker(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    import ray  # Ray takes seconds to import; only Ray launches need it
    import ray.train

    setup_logging("INFO")
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    log.info(
        "launch: Ray Train rank %d of %d on node %s",
        rank,
        ctx.get_world_size(),
        ray.util.get_node_ip_address(),
    )
    rc = run_entry(config["argv"])
    if rc != 0:
        raise RuntimeError(f"rank {rank}: spacetime {config['argv'][0]} exited with status {rc}")


def ray_train(
    train_argv: list[str],
    address: str,
    workers: int,
    use_gpu: bool,
    max_restarts: int,
    storage_path: str,
    run_id: str,
    timeout_s: int,
) -> int:
    from ray.train import FailureConfig, RunConfig, ScalingConfig  # as above
    from ray.train.torch import TorchConfig, TorchTrainer

    local = address == "local"
    work = Path(storage_path).resolve()
    with ray_session(None if local else address, work, num_cpus=None) as resources:
        need = "GPU" if use_gpu else "CPU"
        if resources.get(need, 0) < workers:
            raise ValueError(
                f"Ray cluster has {resources.get(need, 0):g} {need}s; {workers} workers need "
                f"{workers} (one each)"
            )
        argv = train_argv
        for attempt in range(max_restarts + 1):
            log.info(
                "launch: Ray Train, %d workers, attempt %d: spacetime %s",
                workers,
                attempt + 1,
                shlex.join(argv),
            )
            trainer = TorchTrainer(
                _worker,
                train_loop_config={"argv": argv},
                scaling_config=ScalingConfig(
                    num_workers=workers,
                    use_gpu=use_gpu,
                    resources_per_worker=None if use_gpu else {"CPU": 1},
                ),
                torch_config=TorchConfig(
                    backend="nccl" if use_gpu else "gloo", timeout_s=timeout_s
                ),
                run_config=RunConfig(
                    name=f"{run_id}-{attempt}",
                    storage_path=str(work),
                    failure_config=FailureConfig(max_failures=0),
                    worker_runtime_env={"env_vars": worker_env()},
                ),
            )
            try:
                trainer.fit()
                log.info("launch: Ray Train run finished")
                return 0
            except Exception as e:  # Ray wraps worker errors in its own types
                log.error(
                    "launch: Ray Train attempt %d failed: %s%s",
                    attempt + 1,
                    str(e).splitlines()[0][:500] if str(e) else type(e).__name__,
                    "; relaunching from the latest checkpoint" if attempt < max_restarts else "",
                )
                argv = with_resume(train_argv)
    return 1


def rayjob_manifest(
    name: str, entrypoint: str, nnodes: int, nproc: int, image: str, gpus: bool
) -> dict[str, Any]:
    """A KubeRay RayJob (ray.io/v1): a head pod plus `nnodes` worker pods with `nproc` GPUs or CPU
    slots each; the job runs `entrypoint` on the head and deletes the cluster when it ends."""
    per_pod = {"cpu": str(max(1, nproc) * 4), "memory": f"{max(1, nproc) * 16}Gi"}
    if gpus:
        per_pod["nvidia.com/gpu"] = str(nproc)

    def container(kind: str, res: dict[str, str]) -> dict[str, Any]:
        return {
            "name": f"ray-{kind}",
            "image": image,
            # Credentials come from a Kubernetes secret, never from this file.
            "envFrom": [{"secretRef": {"name": "spacetime-s3", "optional": True}}],
            "resources": {"limits": res, "requests": res},
        }

    head_res = {"cpu": "2", "memory": "8Gi"}
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": name},
        "spec": {
            "entrypoint": entrypoint,
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 600,
            "rayClusterSpec": {
                "headGroupSpec": {
                    # The head schedules no training workers: every rank gets a worker pod slot.
                    "rayStartParams": {"num-cpus": "0"},
                    "template": {"spec": {"containers": [container("head", head_res)]}},
                },
                "workerGroupSpecs": [
                    {
                        "groupName": "trainers",
                        "replicas": nnodes,
                        "minReplicas": nnodes,
                        "maxReplicas": nnodes,
                        "rayStartParams": {} if gpus else {"num-cpus": str(nproc)},
                        "template": {"spec": {"containers": [container("worker", per_pod)]}},
                    }
                ],
            },
        },
    }
