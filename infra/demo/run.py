"""`spacetime demo`: the whole system end to end on the built-in `shapes` dataset, on a laptop CPU.

Every stage runs on real files with the real engines: generated videos -> `shard` (local Ray) ->
`recaption` (stats captioner, joined with the source captions) -> `train-vae` -> `encode` (latents
and text states of the stats captions) -> `train` (the DiT under DeepSpeed, ZeRO-0 with Muon, in 2
processes, gloo) -> a forced kill -9 mid-run and `--resume auto` -> `sample` of held-out prompts ->
the shapes scorer. The training length adapts to `--minutes`: the step rate measured before the
interruption sets the number of steps that fit in what is left of the budget.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from data_pipeline.job import run_shard
from infra.config import dump_yaml, to_dict
from infra.demo import shapes
from infra.demo.evaluate import HELD_OUT, evaluate
from infra.errors import JobError
from infra.launch.node import NodeLaunch
from infra.procs import free_port, kill_tree
from infra.provenance import Rerun
from infra.schema import SpacetimeConfig
from infra.storage import Storage
from recaption.job import run_recaption
from trainer.checkpoint import CheckpointStore, tag_for
from trainer.encode import run_encode
from trainer.vae.train import train_vae

log = logging.getLogger(__name__)

# Seconds kept back from the budget for sampling and scoring after training: 24 prompts at 4x4
# latent pixels per token take ~9-12 s on a 2-core machine, 17.5 s on one core (56 s at 2x2
# before, when this was 150).
RESERVE_S = 45.0
# The resumed launch's steps are fitted to the time left at the first launch's rate times this,
# more than fit, and the trainer stops at the deadline (train.stop_at), checkpointed: the rate
# moved 5-10% between the two launches on one core, which left the demo 16 s over or 126 s short
# of its 20 minutes when the steps alone decided (BENCHMARKS.md, rounds 20 and 21); at 0.95 and
# 0.85, resumed launches 10-18% faster than the first (the other core's load changed) ran out of
# steps 60-78 s early (round 22). The trainer's ETA shows the time limit's when it comes first.
RATE_MARGIN = 0.7


def _train_cmd(cfg_file: Path, latents: Path, steps: int, nproc: int) -> list[str]:
    """This node's torchrun command, exactly as `spacetime launch` would build it."""
    args = ["train", "--config", str(cfg_file), "--preset", "demo", "--latents", str(latents)]
    node = NodeLaunch(1, 0, nproc, f"127.0.0.1:{free_port()}", "demo")
    return node.command([*args, "--set", f"train.steps={steps}"])


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"  # the venv's ninja for DeepSpeed
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path(".cache/torch_extensions").resolve()))
    env["OMP_NUM_THREADS"] = "1"
    return env


# Lines of the training log shown on the console as they come (the rest stays in train.log):
# the trainer's step lines (loss, throughput, ETA), resume, checkpoint and time-limit notes, and
# failures.
_ECHO = re.compile(
    r"step \d+/\d+ loss|resumed from|checkpoint \S+ published|time limit|watchdog|Error|error:"
)
_STEP = re.compile(r"step (\d+)/(\d+) (.*) eta (\d+)s")


def _until_kill(line: str, kill_step: int) -> str:
    """A step line of the launch that is killed at `kill_step`: it trains open-ended, so the
    trainer's total and ETA would read 10,000,000 steps and months; show the kill point and the
    time to it (the trainer's rate, from its own ETA) instead."""
    m = _STEP.search(line)
    if m is None:
        return line
    step, total, middle, eta = int(m[1]), int(m[2]), m[3], float(m[4])
    s_per_step = eta / max(1, total - step)
    left = max(0, kill_step - step) * s_per_step
    return line[: m.start()] + f"step {step}/{kill_step} (killed there) {middle} eta {left:.0f}s"


class _Tee:
    """Runs a training launch with its output appended to the log file, echoing the lines a
    newcomer needs to tell a run from a hang (`_ECHO`) to the console as they arrive."""

    def __init__(self, cmd: list[str], log_file: Path, label: str, kill_step: int = 0):
        self.file = log_file.open("a")
        self.label = label
        self.kill_step = kill_step
        self.proc = subprocess.Popen(
            cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.file.write(line)
            self.file.flush()
            if _ECHO.search(line):
                # The trainer's own "HH:MM:SS LEVEL logger:" prefix is dropped; ours replaces it.
                shown = line.rstrip().split(": ", 1)[-1]
                if self.kill_step:
                    shown = _until_kill(shown, self.kill_step)
                log.info("demo %s: %s", self.label, shown)

    def wait(self) -> int:
        rc = self.proc.wait()
        self.thread.join(timeout=10)
        self.file.close()
        return rc


def _latest(ckpt: Path) -> str | None:
    return CheckpointStore.reader(ckpt).latest()


def _state(ckpt: Path) -> dict[str, Any]:
    store = CheckpointStore.reader(ckpt)
    return store.state(store.latest() or "")


def train_with_interruption(
    cfg: SpacetimeConfig, root: Path, latents: Path, deadline: float, log_file: Path
) -> dict[str, Any]:
    """Trains in two launches: the first is killed with SIGKILL after its second checkpoint, the
    second resumes from `latest` and runs the steps that fit before `deadline` (or demo.steps)."""
    cfg_file = root / "train_config.yaml"
    cfg_file.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    ckpt = Path(cfg.run.output_dir) / cfg.run.name / "checkpoints"
    kill_step = 2 * cfg.train.checkpoint_every
    target = tag_for(kill_step)
    log_file.write_text("")
    first = _Tee(_train_cmd(cfg_file, latents, 10**7, 2), log_file, "train", kill_step)
    while (_latest(ckpt) or "") < target and time.monotonic() < deadline:
        if first.proc.poll() is not None:
            raise JobError(
                f"training exited ({first.proc.returncode}) before {target}; see {log_file}"
            )
        time.sleep(0.2)
    kill_tree(first.proc.pid)  # the forced interruption: every process, SIGKILL, mid-step
    first.wait()
    killed_at = _latest(ckpt)
    if killed_at is None:
        raise JobError(f"no checkpoint before the time budget ran out; see {log_file}")
    hist = _state(ckpt)["history"]
    step_s = (hist[-1]["wall"] - hist[0]["wall"]) / max(1, len(hist) - 1)
    done = hist[-1]["step"]
    startup_s = 30.0  # DeepSpeed and process start of the second launch
    steps = cfg.demo.steps or done + max(
        cfg.train.checkpoint_every,
        int((deadline - time.monotonic() - startup_s) / (step_s * RATE_MARGIN)),
    )
    cmd = [*_train_cmd(cfg_file, latents, steps, 2), "--resume", "auto"]
    left = deadline - time.monotonic()
    # A fixed step count (tests) runs to its end, and so do the last few steps of a budget spent
    # before the resume (the trainer refuses a stop time already past).
    timed = not cfg.demo.steps and left > startup_s
    if timed:
        cmd += ["--set", f"train.stop_at={time.time() + left:.1f}"]
    log.info(
        "demo: training killed with SIGKILL after %s (%.2f s/step); resuming to step %d%s",
        killed_at,
        step_s,
        steps,
        f" or for {left:.0f} s, whichever ends first" if timed else "",
    )
    rc = _Tee(cmd, log_file, "train (resumed)").wait()
    if rc != 0:
        raise JobError(f"resumed training failed ({rc}); see {log_file}")
    state = _state(ckpt)
    summary = json.loads((ckpt.parent / "train_summary.json").read_text())
    return {
        "killed_after": killed_at,
        "planned_steps": steps,
        "stopped_at_time_limit": summary["stopped_at_time_limit"],
        "final": _latest(ckpt),
        "steps": state["step"],
        "seconds_per_step": round(step_s, 3),
        "final_loss": state["history"][-1]["loss"],
        "history": state["history"],
        "tokens_seen": state["tokens_seen"],
    }


def plot_loss(history: list[dict[str, Any]], resumed_at: int, path: Path) -> None:
    import matplotlib  # the backend must be chosen before pyplot is imported

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    loss = [h["loss"] for h in history]
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    ax.plot(steps, loss, lw=0.8, alpha=0.5, label="loss per step")
    k = max(1, len(loss) // 40)
    if len(loss) > k:
        smooth = [
            sum(loss[max(0, i - k) : i + 1]) / len(loss[max(0, i - k) : i + 1])
            for i in range(len(loss))
        ]
        ax.plot(steps, smooth, lw=1.5, label=f"mean of {k + 1}")
    ax.axvline(resumed_at, color="k", ls="--", lw=0.8, label="kill -9, resume")
    ax.set_xlabel("step")
    ax.set_ylabel("rectified-flow loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_demo(cfg: SpacetimeConfig, workdir: str, minutes: float, num_videos: int = 0) -> int:
    start = time.monotonic()
    deadline = start + minutes * 60
    root = Path(workdir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    num_videos = num_videos or cfg.demo.videos
    cfg.run.output_dir = str(root / "runs")
    store = Storage(cfg.storage)
    store.write_text(str(root / "config.yaml"), dump_yaml(cfg))
    ckpt = root / "runs" / cfg.run.name / "checkpoints"
    if (ckpt / "latest").exists():  # a demo is a fresh run each time; its workdir is scratch
        shutil.rmtree(root / "runs" / cfg.run.name)
    stages: dict[str, Any] = {}

    def begin(name: str, what: str) -> float:
        log.info("demo: %s: %s ...", name, what)
        return time.monotonic()

    def stage(name: str, t: float, **info: Any) -> None:
        stages[name] = {**info, "seconds": round(time.monotonic() - t, 1)}
        log.info("demo: %s done in %.1fs %s", name, stages[name]["seconds"], info)

    t = begin("generate", f"{num_videos} shapes videos")
    manifest = shapes.generate(
        root / "videos", num_videos, seed=cfg.run.seed, exclude=set(HELD_OUT)
    )
    stage("generate", t, videos=num_videos, held_out_combinations=len(HELD_OUT))

    t = begin("shard", "cutting clips into webdataset shards on local Ray")
    sh = run_shard(
        str(manifest), str(root / "clips"), cfg.shard, cfg.storage, rerun=Rerun(overwrite=True)
    )
    stage("shard", t, clips=sh["clips"], shards=sh["shards"], errors=sh["errors"])

    t = begin("recaption", "captioning every clip")
    rc = run_recaption(str(root / "clips"), str(root / "captions"), cfg.recaption, cfg.storage)
    stage("recaption", t, captioned=rc["captioned"], failed=rc["failed"], backend=rc["backend"])

    t = begin("train-vae", f"training the VAE for {cfg.vae_train.steps} steps")
    vae = train_vae(str(root / "clips"), str(root / "vae"), cfg.vae_train, store)
    stage(
        "train-vae",
        t,
        steps=vae["steps"],
        psnr_before=round(vae["psnr_before"], 2),
        psnr_after=round(vae["psnr_after"], 2),
    )

    t = begin("encode", "encoding clips to latents and captions to text states")
    enc = run_encode(
        str(root / "clips"),
        str(root / "latents"),
        str(root / "vae" / "vae"),
        None,
        cfg.encode,
        cfg.storage,
        captions=str(root / "captions"),
    )
    stage("encode", t, clips=enc["clips"], shards=enc["shards"])

    t = begin(
        "train", "training the DiT in 2 processes (killed with SIGKILL mid-run, then resumed)"
    )
    tr = train_with_interruption(
        cfg, root, root / "latents", deadline - RESERVE_S, root / "train.log"
    )
    history = tr.pop("history")
    plot_loss(history, int(tr["killed_after"].split("-")[1]), root / "loss.png")
    stage("train", t, **tr)

    redraws = len(HELD_OUT) * (cfg.demo.held_out_draws - 1)
    t = begin(
        "sample+eval",
        f"sampling {cfg.demo.eval_prompts} prompts and {redraws} more draws of the held-out "
        "combinations, and scoring them",
    )
    ev = evaluate(
        str(ckpt.parent),
        str(root / "vae" / "vae"),
        str(root / "samples"),
        k=cfg.demo.eval_prompts,
        captions=str(root / "captions"),
        sample_cfg=cfg.sample,
        held_out_draws=cfg.demo.held_out_draws,
    )
    stage("sample+eval", t, colour=ev["colour"], direction=ev["direction"], shape=ev["shape"])

    summary = {
        "workdir": str(root),
        "stages": stages,
        "eval": {k: v for k, v in ev.items() if k != "samples"},
        "minutes_budget": minutes,
        "seconds": round(time.monotonic() - start, 1),
        "artefacts": {
            "contact_sheet": str(root / "samples" / "contact_sheet.png"),
            "animated_grid": str(root / "samples" / "samples.gif"),
            "samples": str(root / "samples"),
            "loss_curve": str(root / "loss.png"),
            "checkpoints": str(ckpt),
            "tensorboard": str(root / "runs" / cfg.run.name / "tensorboard"),
        },
    }
    store.write_text(str(root / "summary.json"), json.dumps(summary, indent=2))
    log.info(
        "demo: %d videos -> %d clips -> %d training steps (killed after %s, resumed) -> %d samples "
        "in %.0fs; colour %.0f%%, direction %.0f%%, shape %.0f%% (chance 17/25/33%%; held-out "
        "shape %.0f%% of %d draws), travel %.2f of the frame (data 0.61), intact %.0f%%; contact "
        "sheet %s",
        num_videos,
        sh["clips"],
        tr["steps"],
        tr["killed_after"],
        ev["n"],
        summary["seconds"],
        100 * ev["colour"],
        100 * ev["direction"],
        100 * ev["shape"],
        100 * ev["held_out"]["shape"],
        ev["held_out"]["n"],
        ev["travel"],
        100 * ev["intact"],
        summary["artefacts"]["contact_sheet"],
    )
    return 0
