"""The handlers of the `spacetime` subcommands: each resolves the configuration and runs its job.

Handlers import their stage inside the function: `spacetime --help` and `spacetime config` stay
fast (no torch, Ray or DeepSpeed import), and a CPU machine never imports GPU-only code it does not
use.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from infra.config import ConfigError, dump_yaml, load
from infra.provenance import Rerun
from infra.schema import SpacetimeConfig
from infra.schema.presets import PRESETS, get_preset
from infra.storage import Storage

log = logging.getLogger("spacetime")


def resolve_config(args: argparse.Namespace) -> SpacetimeConfig:
    return load(SpacetimeConfig, get_preset(args.preset), args.config, args.overrides)


def cmd_vae(args: argparse.Namespace) -> int:
    from trainer.vae.reconstruct import reconstruct

    reconstruct(args.vae, args.input, args.output, args.max_frames, args.max_side, args.tile)
    return 0


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
    run_shard(
        args.input,
        args.output,
        cfg.shard,
        cfg.storage,
        args.ray_address,
        Rerun(overwrite=args.overwrite, retry_failed=not args.skip_failed),
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
        Rerun(overwrite=args.overwrite, retry_failed=not args.skip_failed),
    )
    return 0


def cmd_train_vae(args: argparse.Namespace) -> int:
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
        rerun=Rerun(overwrite=args.overwrite),
    )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    cfg = resolve_config(args)
    for name in ("latents", "clips", "vae", "captions"):
        if getattr(args, name):
            setattr(cfg.train.data, name, getattr(args, name))
    if args.init:
        cfg.train.init = args.init
    if args.dry_run:
        from trainer.dry_run import dry_run

        world = args.world_size or int(os.environ.get("WORLD_SIZE", "1"))
        report = dry_run(cfg.train, cfg.run.seed, Storage(cfg.storage), world)
        print(dump_yaml(cfg.train), end="")
        print(json.dumps(report, indent=2))
        return 0
    from trainer.train import train

    train(cfg.train, cfg.run, cfg.storage, resume=args.resume)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from trainer.checkpoint import CheckpointStore
    from trainer.weights import lora_base, resolve_checkpoint

    ckpt = resolve_checkpoint(args.checkpoint)
    if args.merge_lora:
        from trainer.weights import export_merged

        out = export_merged(ckpt, Path(args.output))
        log.info("export: %s -> %s (LoRA adapters merged into the base)", ckpt, out)
        return 0
    if lora_base(ckpt):
        log.info("export: %s holds LoRA adapters only; --merge-lora writes a plain model", ckpt)
    out = CheckpointStore.reader(ckpt.parent).export(ckpt.name, Path(args.output))
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
    rewrite = None
    if args.upsample:
        from recaption.upsample import Upsampler

        rewrite = Upsampler.from_caption_set(args.upsample, Storage(cfg.storage))
    run_sample(
        args.checkpoint,
        args.vae,
        args.prompt,
        args.output,
        cfg.sample,
        text_encoder=args.text_encoder,
        inputs=args.input,
        rewrite=rewrite,
        storage=Storage(cfg.storage),
    )
    return 0


def cmd_launch(args: argparse.Namespace) -> int:
    from infra.launch import main as launch_main

    return launch_main(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from infra.demo.run import run_demo

    cfg = resolve_config(args)
    return run_demo(cfg, workdir=args.workdir, minutes=args.minutes)


def cmd_curate(args: argparse.Namespace) -> int:
    from data_pipeline.curate import run_curate

    cfg = resolve_config(args)
    run_curate(args.shards, args.output, cfg.curate, cfg.storage, args.ray_address)
    return 0


def cmd_browse(args: argparse.Namespace) -> int:
    from infra.browse.serve import run

    cfg = resolve_config(args)
    run(args.paths, args.host, args.port, cfg.storage)
    return 0
