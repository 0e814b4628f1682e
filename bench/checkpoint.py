"""How long a checkpoint save stops the training loop: synchronous vs asynchronous saves
(`train.checkpoint_async`), measured in one run on one machine.

    python bench/checkpoint.py [--size B] [--rounds 3]

One process (a world of one), DiT-B by default, fp32, ZeRO-2, EMA on: the trainer's real saver
writes real checkpoints to a local folder (page cache, then disk). Rounds alternate sync and async
saves so drift of a shared machine hits both alike. Reported: the seconds the loop is blocked per
save (target: async <= 20% of sync), the seconds until an async save is published, and the step
time while a save writes in the background vs without one (on a 2-core CPU the writing thread
competes with the step for cores; on a GPU it competes only for host memory bandwidth).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.train import make_latents  # noqa: E402


def measure(size: str, rounds: int) -> dict[str, float]:
    from infra.config import load
    from infra.schema import SpacetimeConfig
    from infra.schema.presets import get_preset
    from infra.storage import Storage
    from trainer.engine import init_distributed
    from trainer.saving import Saver
    from trainer.train import Trainer

    with tempfile.TemporaryDirectory(dir=ROOT / ".cache") as tmp:
        make_latents(Path(tmp) / "lat", 128)
        cfg = load(
            SpacetimeConfig,
            get_preset("tiny"),
            None,
            [
                f"train.data.latents={Path(tmp) / 'lat'}",
                f"run.output_dir={tmp}",
                "run.name=bench",
                f"train.model.size={size}",
                "train.zero_stage=2",
                "train.steps=1000",
                "train.data.token_budget=512",
                "train.data.microbatches_per_step=1",
                "train.keep_checkpoints=2",
                "train.ema_decay=0.999",
            ],
        )
        tr = Trainer(cfg.train, cfg.run, Storage(), init_distributed())  # type: ignore[attr-defined]
        tr.setup(None)
        stream = tr.loader.iterate(0, 0)

        def step() -> float:
            t0 = time.perf_counter()
            tr.train_step(next(stream))
            tr.step += 1
            return time.perf_counter() - t0

        for _ in range(2):
            step()
        sync, blocked, publish, plain, during = [], [], [], [], []
        savers = {False: Saver(tr, asynchronous=False), True: Saver(tr, asynchronous=True)}
        first = 0.0
        for r in range(rounds + 1):  # round 0 allocates the async saver's host buffers
            tr.saver = savers[False]
            t_sync = tr.saver.save()
            plain.extend(step() for _ in range(3))
            tr.saver = savers[True]
            t0 = time.perf_counter()
            t_async = tr.saver.save()
            while tr.saver._thread is not None and tr.saver._thread.is_alive():
                during.append(step())
            t_pub = time.perf_counter() - t0
            tr.saver.wait()
            step()
            if r == 0:
                first = t_async
            else:
                sync.append(t_sync)
                blocked.append(t_async)
                publish.append(t_pub)
        ckpt = tr.ckpt.local / tr.ckpt.latest()  # type: ignore[operator]
        size_mb = sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file()) / 2**20
        step_s = statistics.median(plain)
        # What a save really costs the run: the blocked time plus how much slower the steps
        # that overlap the background write ran.
        lost = statistics.median(blocked) + sum(d - step_s for d in during) / rounds
        return {
            "lost_s": lost,
            "params_m": tr.model.num_params() / 1e6,
            "size_mb": size_mb,
            "sync_s": statistics.median(sync),
            "async_s": statistics.median(blocked),
            "async_first_s": first,
            "publish_s": statistics.median(publish),
            "step_s": step_s,
            "step_during_s": statistics.median(during) if during else float("nan"),
            "steps_during": len(during) / rounds,
        }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", default="B", help="DiT size (tiny, S, B, ...)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    (ROOT / ".cache").mkdir(exist_ok=True)
    r = measure(args.size, args.rounds)
    print(
        f"\nDiT-{args.size} ({r['params_m']:.0f}M params), fp32, ZeRO-2, 1 rank, EMA on; "
        f"checkpoint {r['size_mb']:.0f} MB on local disk; median of {args.rounds} rounds\n"
    )
    print("| measure | value | target |\n|---|---|---|")
    print(f"| loop blocked per save, synchronous | {r['sync_s']:.2f} s | |")
    print(f"| loop blocked per save, asynchronous (snapshot) | {r['async_s']:.2f} s | |")
    ratio = r["async_s"] / r["sync_s"]
    print(
        f"| asynchronous / synchronous | {ratio:.2f}x | <= 0.20x "
        f"({'met' if ratio <= 0.2 else 'not met'}) |"
    )
    print(
        f"| loop blocked by the first asynchronous save (allocates the host buffers) | "
        f"{r['async_first_s']:.2f} s | |"
    )
    print(f"| asynchronous save begun -> published | {r['publish_s']:.2f} s | |")
    print(f"| training step, no save running | {r['step_s']:.2f} s | |")
    print(
        f"| training step while a save writes ({r['steps_during']:.1f} steps per save) | "
        f"{r['step_during_s']:.2f} s | |"
    )
    print(
        f"| run time lost per save, asynchronous (blocked + slower overlapping steps) | "
        f"{r['lost_s']:.2f} s | vs {r['sync_s']:.2f} s synchronous |"
    )


if __name__ == "__main__":
    main()
