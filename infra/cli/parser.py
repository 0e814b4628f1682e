"""The `spacetime` argument parser: one subcommand per job, each with the configuration flags."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from infra.cli import commands
from infra.launch import add_arguments as add_launch_arguments
from infra.schema.presets import PRESETS


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

    p = add("shard", "cut videos into clips and write webdataset shards (Ray)", commands.cmd_shard)
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

    p = add(
        "curate",
        "select clips by their stored scores (no re-encoding); a selection for the next stages",
        commands.cmd_curate,
    )
    p.add_argument("--shards", required=True, help="output of `spacetime shard`")
    p.add_argument(
        "--output",
        required=True,
        help="selection folder: give it as --shards (or train --clips) to the next stages",
    )
    p.add_argument(
        "--ray-address",
        default=None,
        help="with curate.dedup_partitions > 0: the Ray cluster (default: start a local one)",
    )
    _add_config_args(p)

    p = add(
        "browse",
        "a local read-only web page over shards, selections, caption sets and runs",
        commands.cmd_browse,
    )
    p.add_argument("paths", nargs="+", help="folders or s3:// prefixes, recognised by contents")
    p.add_argument("--host", default="127.0.0.1", help="default: loopback only")
    p.add_argument("--port", type=int, default=8765, help="0: any free port")
    _add_config_args(p)

    p = add(
        "recaption", "write detailed captions for every clip with a VLM", commands.cmd_recaption
    )
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

    p = add("train-vae", "train the causal 3D spacetime VAE on clip shards", commands.cmd_train_vae)
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

    p = add("encode", "cache VAE latents and text embeddings as shards (Ray)", commands.cmd_encode)
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

    p = add("train", "train the spacetime DiT with DeepSpeed ZeRO", commands.cmd_train)
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
        "--init",
        default=None,
        help="fine-tune: start a new run from these weights (a run dir, a checkpoint or an "
        "exported folder; train.init_weights picks EMA or raw)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the DeepSpeed config, parameter count, attention backend, packing stats, the "
        "memory per rank and the predicted step time",
    )
    p.add_argument(
        "--world-size",
        type=int,
        default=None,
        help="with --dry-run: the number of ranks to plan for (default: $WORLD_SIZE, else 1)",
    )
    _add_config_args(p)

    p = add(
        "sample", "generate videos (t2v, t2i, i2v, extend, interpolate, edit)", commands.cmd_sample
    )
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
    p.add_argument(
        "--text-encoder",
        default=None,
        help="local text encoder dir (default: the one the training latents record, or "
        "train.data.text_encoder; another model is refused)",
    )
    p.add_argument(
        "--upsample",
        default=None,
        metavar="CAPTION_SET",
        help="rewrite prompts in the style of the caption set the model trained on",
    )
    p.add_argument("--frames", type=int, help="1 + k x the VAE's time stride (1: an image)")
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--steps", type=int, help="sampler steps")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale")
    p.add_argument("--seed", type=int)
    p.add_argument("--strength", type=float, help="edit: noise level in (0, 1]")
    _add_config_args(p)

    p = add(
        "export", "consolidate a training checkpoint into fp32 safetensors", commands.cmd_export
    )
    p.add_argument("--checkpoint", required=True, help="run dir, checkpoints dir or checkpoint dir")
    p.add_argument("--output", required=True, help="folder for the exported weights")
    p.add_argument(
        "--merge-lora",
        action="store_true",
        help="a LoRA run: fold the adapters into its base and write a plain model",
    )

    p = add(
        "launch",
        "launch training on one or many nodes (per-node, hostfile, Slurm)",
        commands.cmd_launch,
    )
    add_launch_arguments(p)
    p.add_argument("rest", nargs=argparse.REMAINDER, help="-- train --config ...")

    p = add(
        "vae",
        "judge a VAE (spacetime's or a diffusers Wan/HunyuanVideo/CogVideoX/LTX-Video folder)",
        commands.cmd_vae,
    )
    p.add_argument("action", choices=["reconstruct"])
    p.add_argument("--vae", required=True, help="VAE directory")
    p.add_argument("--input", required=True, help="a video (or image) file")
    p.add_argument("--output", required=True, help="folder for side_by_side.mp4 and the scores")
    p.add_argument("--max-frames", type=int, default=33, help="frames read (cut to 1 + stride k)")
    p.add_argument(
        "--max-side", type=int, default=256, help="downscale the longer side (0: native)"
    )
    p.add_argument("--tile", type=int, default=0, help="the VAE's spatial tiling, pixels (0: off)")

    p = add(
        "demo",
        "the whole system end to end on a built-in dataset (CPU, minutes)",
        commands.cmd_demo,
    )
    p.add_argument("--workdir", default="demo-output", help="where every artefact goes")
    p.add_argument("--minutes", type=float, default=20.0, help="time budget for the whole demo")
    _add_config_args(p, preset="demo")

    p = add(
        "config", "print a preset, list presets, or validate a config file", commands.cmd_config
    )
    p.add_argument("action", choices=["show", "presets", "validate"])
    p.add_argument("target", nargs="?", help="preset name (show) or file (validate)")
    p.add_argument("--preset", default="default", help="base preset for validate")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return parser
