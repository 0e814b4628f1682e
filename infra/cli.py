"""The `spacetime` command line: one subcommand per job.

Handlers import their stage lazily so `spacetime --help` stays fast and a CPU machine never
imports GPU-only code it does not use.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from infra.config import ConfigError, dump_yaml, load
from infra.errors import JobError
from infra.log import setup_logging
from infra.presets import PRESETS, get_preset
from infra.schema import SpacetimeConfig
from infra.storage import StorageError

log = logging.getLogger("spacetime")


def _add_config_args(p: argparse.ArgumentParser, preset: str = "default") -> None:
    g = p.add_argument_group("configuration (preset, then file, then --set overrides)")
    g.add_argument(
        "--preset", default=preset, help=f"named preset: {', '.join(PRESETS)} (default {preset})"
    )
    g.add_argument("--config", metavar="FILE", help="YAML/TOML file with the keys to change")
    g.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dotted override, e.g. --set run.seed=3 (repeatable)",
    )


def resolve_config(args: argparse.Namespace) -> SpacetimeConfig:
    return load(SpacetimeConfig, get_preset(args.preset), args.config, args.overrides)


def cmd_config(args: argparse.Namespace) -> int:
    if args.action == "presets":
        for name, fn in PRESETS.items():
            print(f"{name:10s} {(fn.__doc__ or '').strip().splitlines()[0]}")
        return 0
    if args.action == "show":
        cfg = load(SpacetimeConfig, get_preset(args.target or "default"), None, args.overrides)
        sys.stdout.write(dump_yaml(cfg))
        return 0
    if args.action == "validate":
        if not args.target:
            raise ConfigError("spacetime config validate FILE: a config file is required")
        cfg = load(SpacetimeConfig, get_preset(args.preset), args.target, args.overrides)
        sys.stdout.write(dump_yaml(cfg))
        log.info("%s: valid", args.target)
        return 0
    raise AssertionError(args.action)


def cmd_shard(args: argparse.Namespace) -> int:
    from data_pipeline.job import run_shard

    cfg = resolve_config(args)
    s = run_shard(
        args.input,
        args.output,
        cfg.shard,
        cfg.storage,
        args.ray_address,
        args.overwrite,
        retry_failed=not args.skip_failed,
    )
    log.info(
        "shard: %d videos -> %d clips (%.1fs of %.1fs source video) in %d shards; %d errors %s; "
        "%d files ignored by extension; %.1fs",
        s["sources"],
        s["clips"],
        s["seconds_out"],
        s["seconds_in"],
        s["shards"],
        s["errors"],
        s["errors_by_reason"] or "",
        s["ignored_files"],
        s["wall_s"],
    )
    return 0


def cmd_recaption(args: argparse.Namespace) -> int:
    from recaption.job import run_recaption

    cfg = resolve_config(args)
    for name in ("backend", "model", "prompt"):
        if getattr(args, name) is not None:
            setattr(cfg.recaption, name, getattr(args, name))
    cfg.recaption.validate()
    run_recaption(
        args.shards,
        args.output,
        cfg.recaption,
        cfg.storage,
        args.ray_address,
        retry_failed=not args.skip_failed,
        overwrite=args.overwrite,
    )
    return 0


def cmd_train_vae(args: argparse.Namespace) -> int:
    from infra.storage import Storage
    from trainer.vae.train import train_vae

    cfg = resolve_config(args)
    train_vae(
        args.shards, args.output, cfg.vae_train, Storage(cfg.storage), resume=args.resume == "auto"
    )
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    from trainer.encode import run_encode

    cfg = resolve_config(args)
    run_encode(
        args.shards,
        args.output,
        args.vae,
        args.text_encoder,
        cfg.encode,
        cfg.storage,
        args.ray_address,
        captions=args.captions,
        overwrite=args.overwrite,
    )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    cfg = resolve_config(args)
    for name in ("latents", "clips", "vae", "captions"):
        if getattr(args, name):
            setattr(cfg.train.data, name, getattr(args, name))
    if args.dry_run:
        import json
        import os

        from infra.storage import Storage
        from trainer.train import dry_run

        world = int(os.environ.get("WORLD_SIZE", "1"))
        report = dry_run(cfg.train, cfg.run.seed, Storage(cfg.storage), world)
        print(dump_yaml(cfg.train), end="")
        print(json.dumps(report, indent=2))
        return 0
    from trainer.train import train

    train(cfg, resume=args.resume)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from trainer.checkpoint import export_weights
    from trainer.sample import resolve_checkpoint

    ckpt = resolve_checkpoint(args.checkpoint)
    out = export_weights(ckpt.parent, ckpt.name, Path(args.output))
    log.info("export: %s -> %s (model.safetensors, ema.safetensors, config.json)", ckpt, out)
    return 0


SAMPLE_FLAGS = ("mode", "frames", "height", "width", "steps", "guidance", "seed", "strength")


def cmd_sample(args: argparse.Namespace) -> int:
    from trainer.sample import run_sample

    cfg = resolve_config(args)
    for name in SAMPLE_FLAGS:
        if getattr(args, name) is not None:
            setattr(cfg.sample, name, getattr(args, name))
    cfg.sample.validate()
    run_sample(
        args.checkpoint,
        args.vae,
        args.prompt,
        args.output,
        cfg.sample,
        text_encoder=args.text_encoder,
        inputs=args.input,
        upsample=args.upsample,
    )
    return 0


def cmd_launch(args: argparse.Namespace) -> int:
    from infra.launch import main as launch_main

    return launch_main(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from infra.demo import run_demo

    cfg = resolve_config(args)
    return run_demo(cfg, workdir=args.workdir, minutes=args.minutes)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spacetime",
        description="Train Sora-style text-to-video diffusion transformers, from raw videos to samples.",
    )
    parser.add_argument(
        "--log-level", default=None, help="override run.log_level (DEBUG, INFO, ...)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str, help_: str, fn: Callable[[argparse.Namespace], int]
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(func=fn)
        return p

    p = add("shard", "cut videos into clips and write webdataset shards (Ray)", cmd_shard)
    p.add_argument(
        "--input", required=True, help="folder, s3:// prefix, or manifest (.jsonl/.csv/.parquet)"
    )
    p.add_argument("--output", required=True, help="output folder or s3:// prefix")
    p.add_argument(
        "--ray-address", default=None, help="existing Ray cluster (default: start a local one)"
    )
    p.add_argument("--overwrite", action="store_true", help="delete existing output and start over")
    p.add_argument(
        "--skip-failed",
        action="store_true",
        help="on a rerun, keep inputs that failed before as errors instead of trying them again",
    )
    _add_config_args(p)

    p = add("recaption", "write detailed captions for every clip with a VLM", cmd_recaption)
    p.add_argument("--shards", required=True, help="output of `spacetime shard`")
    p.add_argument(
        "--output", required=True, help="caption set folder or s3:// prefix (one set per folder)"
    )
    p.add_argument(
        "--backend", choices=["stats", "hf", "vllm"], default=None, help="default: stats"
    )
    p.add_argument("--model", default=None, help="local model directory (hf, vllm)")
    p.add_argument("--prompt", default=None, help="prompt template name (detailed, short)")
    p.add_argument("--ray-address", default=None)
    p.add_argument("--overwrite", action="store_true", help="delete the caption set, start over")
    p.add_argument(
        "--skip-failed",
        action="store_true",
        help="on a rerun, keep failed captions instead of captioning those clips again",
    )
    _add_config_args(p)

    p = add("train-vae", "train the causal 3D spacetime VAE on clip shards", cmd_train_vae)
    p.add_argument("--shards", required=True, help="output of `spacetime shard` (local or s3://)")
    p.add_argument(
        "--output",
        required=True,
        help="folder for checkpoints, the trained VAE and reconstructions",
    )
    p.add_argument(
        "--resume", default=None, choices=["auto"], help="continue from the latest checkpoint"
    )
    _add_config_args(p)

    p = add("encode", "cache VAE latents and text embeddings as shards (Ray)", cmd_encode)
    p.add_argument("--shards", required=True, help="output of `spacetime shard` (local or s3://)")
    p.add_argument(
        "--vae",
        required=True,
        help="trained or pretrained VAE directory (config.json + model.safetensors)",
    )
    p.add_argument(
        "--text-encoder",
        default=None,
        help="local text encoder directory (default: packaged MiniLM)",
    )
    p.add_argument("--output", required=True, help="latent shard folder or s3:// prefix")
    p.add_argument(
        "--captions",
        default=None,
        help="caption set (output of `spacetime recaption`) to train on; default: source captions",
    )
    p.add_argument("--ray-address", default=None)
    p.add_argument("--overwrite", action="store_true", help="delete the latents, start over")
    _add_config_args(p)

    p = add("train", "train the spacetime DiT with DeepSpeed ZeRO", cmd_train)
    p.add_argument("--latents", default=None, help="latent shards (output of `spacetime encode`)")
    p.add_argument("--clips", default=None, help="or clip shards, encoded on the fly (needs --vae)")
    p.add_argument("--vae", default=None, help="with --clips: the VAE directory")
    p.add_argument("--captions", default=None, help="with --clips: a caption set")
    p.add_argument(
        "--resume",
        default=None,
        help="'auto' (continue from the run's latest checkpoint, or start) or a checkpoint dir",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the DeepSpeed config, parameter count, attention backend and packing stats",
    )
    _add_config_args(p)

    p = add("sample", "generate videos (t2v, t2i, i2v, extend, interpolate, edit)", cmd_sample)
    p.add_argument(
        "--checkpoint",
        required=True,
        help="run dir, checkpoints dir, checkpoint dir or exported weights dir",
    )
    p.add_argument("--vae", required=True, help="VAE directory the latents were encoded with")
    p.add_argument("--prompt", action="append", default=[], help="text prompt (repeatable)")
    p.add_argument("--output", required=True, help="folder for mp4s, pngs and their records")
    p.add_argument(
        "--mode", choices=["t2v", "i2v", "extend", "extend_backward", "interpolate", "edit"]
    )
    p.add_argument(
        "--input",
        action="append",
        default=[],
        help="image or video to condition on (interpolate: give two)",
    )
    p.add_argument("--text-encoder", default=None, help="local text encoder dir (as in encode)")
    p.add_argument(
        "--upsample",
        default=None,
        metavar="CAPTION_SET",
        help="rewrite prompts in the style of the caption set the model trained on",
    )
    p.add_argument("--frames", type=int, help="1 + 4k frames (1: an image)")
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--steps", type=int, help="sampler steps")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale")
    p.add_argument("--seed", type=int)
    p.add_argument("--strength", type=float, help="edit: noise level in (0, 1]")
    _add_config_args(p)

    p = add("export", "consolidate a training checkpoint into fp32 safetensors", cmd_export)
    p.add_argument("--checkpoint", required=True, help="run dir, checkpoints dir or checkpoint dir")
    p.add_argument("--output", required=True, help="folder for the exported weights")

    p = add(
        "launch", "launch training on one or many nodes (per-node, hostfile, Slurm)", cmd_launch
    )
    from infra.launch import add_arguments

    add_arguments(p)
    p.add_argument("rest", nargs=argparse.REMAINDER, help="-- train --config ...")

    p = add("demo", "the whole system end to end on a built-in dataset (CPU, minutes)", cmd_demo)
    p.add_argument("--workdir", default="demo-output", help="where every artefact goes")
    p.add_argument("--minutes", type=float, default=20.0, help="time budget for the whole demo")
    _add_config_args(p, preset="demo")

    p = add("config", "print a preset, list presets, or validate a config file", cmd_config)
    p.add_argument("action", choices=["show", "presets", "validate"])
    p.add_argument("target", nargs="?", help="preset name (show) or file (validate)")
    p.add_argument("--preset", default="default", help="base preset for validate")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level or "INFO")
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        log.error("config error: %s", e)
        return 2
    except (JobError, StorageError, FileNotFoundError, FileExistsError, ValueError) as e:
        log.error("spacetime %s: %s", args.command, e)
        return 1
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
