"""Sampler settings on finished demo runs: each run's final checkpoint sampled again (issue 20).

    python bench/demo_rescore.py WORKDIR... [--set sample.guidance=2.5,sample.steps=40 ...]

Each `--set` is one sampler setting (comma-separated `sample.*` overrides of the run's own
config.yaml; none given: the run's settings, which reproduce its demo score exactly). Every
workdir is scored as the demo scores it (its prompts, held-out draws, captions, VAE and noise
seeds), nothing is retrained, and one row per setting sums the runs: how many meet every target of
issue 20, how many draws split or change colour, colour misses, shape and travel. Scored samples
go to WORKDIR/rescore/<setting>/; per-run scores are appended to --jsonl.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.run_all import DEMO_TARGETS, MIN_TRAVEL  # noqa: E402
from infra.config import load  # noqa: E402
from infra.demo.evaluate import evaluate  # noqa: E402
from infra.schema import SpacetimeConfig  # noqa: E402

# Issue 20's targets, on the 24 prompts and on the held-out draws alike (and travel, MIN_TRAVEL);
# intact: no sample splits or changes colour.
TARGETS = DEMO_TARGETS | {"intact": 1.0}


def meets_every_target(ev: dict[str, Any]) -> bool:
    both = all(ev[a] >= t and ev["held_out"][a] >= t for a, t in TARGETS.items())
    return both and ev["travel"] >= MIN_TRAVEL


def rescore(workdir: Path, overrides: list[str]) -> dict[str, Any]:
    cfg = load(SpacetimeConfig, file=workdir / "config.yaml", overrides=overrides)
    ckpt = sorted((workdir / "runs" / cfg.run.name / "checkpoints").glob("step-*"))[-1]
    tag = ",".join(overrides) or "as-run"
    return evaluate(
        str(ckpt), str(workdir / "vae" / "vae"), str(workdir / "rescore" / tag),
        k=cfg.demo.eval_prompts, captions=str(workdir / "captions"), sample_cfg=cfg.sample,
        held_out_draws=cfg.demo.held_out_draws,
    )  # fmt: skip


def misses(ev: dict[str, Any], attr: str) -> int:
    return sum(s["measured"].get(attr) != s[attr] for s in ev["samples"])


def row(setting: str, runs: dict[str, dict[str, Any]]) -> str:
    evs = list(runs.values())
    failing = [name for name, ev in runs.items() if not meets_every_target(ev)]
    draws = sum(len(ev["samples"]) for ev in evs)
    broken = sum(not s["measured"].get("intact") for ev in evs for s in ev["samples"])
    shapes = [ev["shape"] for ev in evs]
    held = [s for ev in evs for s in ev["samples"] if s["held_out"] == "True"]
    held_shape = sum(s["measured"].get("shape") == s["shape"] for s in held)
    travel = [ev["travel"] for ev in evs]
    return (
        f"| {setting} | {len(evs) - len(failing)} of {len(evs)} ({', '.join(failing) or '-'}) "
        f"| {broken} of {draws} | {sum(misses(ev, 'colour') for ev in evs)} "
        f"| {100 * sum(shapes) / len(evs):.1f}% ({100 * min(shapes):.0f}-{100 * max(shapes):.0f}) "
        f"| {held_shape}/{len(held)} | {min(travel):.2f}-{max(travel):.2f} |"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workdirs", nargs="+", type=Path)
    p.add_argument("--set", dest="settings", action="append", default=[],
                   help="one sampler setting: comma-separated sample.* overrides")  # fmt: skip
    p.add_argument("--jsonl", type=Path, default=None, help="append each run's scores here")
    args = p.parse_args()
    lines = [
        "| sampler | runs meeting every target (failing) | draws not intact | colour misses "
        "| shape, mean (range) | held-out shape | travel |",
        "|---|---|---|---|---|---|---|",
    ]
    for setting in args.settings or [""]:
        overrides = [kv for kv in setting.split(",") if kv]
        runs: dict[str, dict[str, Any]] = {}
        for i, wd in enumerate(args.workdirs, 1):
            runs[wd.name] = ev = rescore(wd, overrides)
            print(f"[{setting or 'as run'}] {i}/{len(args.workdirs)} {wd.name}: colour "
                  f"{ev['colour']:.0%} shape {ev['shape']:.0%} intact {ev['intact']:.0%} held-out "
                  f"shape {ev['held_out']['shape']:.0%} intact {ev['held_out']['intact']:.0%}",
                  flush=True)  # fmt: skip
            if args.jsonl:
                with args.jsonl.open("a") as f:
                    keep = {k: v for k, v in ev.items() if k != "samples"}
                    f.write(json.dumps({"workdir": str(wd), "setting": setting} | keep) + "\n")
        lines.append(row(setting or "as run", runs))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
