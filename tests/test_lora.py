"""LoRA fine-tuning (`train.lora`, trainer/lora.py): adapters on the DiT's projections through
peft, trained under the real DeepSpeed engine on a frozen base, saved alone, resumed exactly,
merged by `spacetime export --merge-lora`."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from infra.errors import JobError
from tests.faults import fault_env
from tests.test_long_runs import _ema, _equal, _state
from tests.train_runs import _cmd, _run
from trainer import lora
from trainer.finetune import prepare_lora
from trainer.model.config import DiTConfig, LoraConfig
from trainer.model.dit import DiT
from trainer.model.packing import pack


def _tiny(dtype: torch.dtype = torch.float32) -> DiT:
    torch.manual_seed(0)
    cfg = DiTConfig(size="tiny", in_channels=4, attn_backend="sdpa")
    return DiT(cfg).to(dtype)


def _batch(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, object]:
    g = torch.Generator().manual_seed(1)
    lats = [torch.randn(4, 2, 4, 6, generator=g), torch.randn(4, 1, 8, 4, generator=g)]
    texts = [torch.randn(5, 384, generator=g), torch.randn(3, 384, generator=g)]
    x, batch = pack(lats, texts, (1, 2, 2))
    batch.text = batch.text.to(dtype)
    return x.to(dtype), torch.tensor([100.0, 700.0], dtype=dtype), batch


def test_adapters_train_alone_and_merge_to_the_same_function_in_float64() -> None:
    model = _tiny(torch.float64)
    x, t, batch = _batch(torch.float64)
    with torch.no_grad():  # the DiT's zero-initialised output layer would hide any difference
        model.final.weight.normal_(std=0.1)
        for blk in model.blocks:
            blk.modulation[-1].weight.normal_(std=0.1)
    before = model(x, t, batch)
    lora.apply(model, LoraConfig(rank=4, alpha=8))
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(lora.is_adapter_key(n) for n in names)
    # Every projection of every block got one (q, kv, out x self/cross, mlp.0, mlp.2).
    assert len(names) == 2 * 8 * len(model.blocks)
    with torch.no_grad():  # B starts at zero: the adapted model is the base
        assert torch.equal(model(x, t, batch), before)
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.normal_(std=0.05)
        adapted = model(x, t, batch)
    assert (adapted - before).abs().max() > 1e-3  # the adapters do something
    merged = lora.merge(model)
    assert not any(lora.is_adapter_key(k) or "base_layer" in k for k in merged.state_dict())
    plain = DiT(merged.cfg).to(torch.float64)
    plain.load_state_dict(merged.state_dict(), strict=True)  # a plain DiT's weights
    with torch.no_grad():
        out = plain(x, t, batch)
    assert (out - adapted).abs().max().item() < 1e-10


def test_a_target_that_names_no_projection_is_refused() -> None:
    with pytest.raises(JobError, match="'qkv' names no linear layer"):
        lora.apply(_tiny(), LoraConfig(rank=2, targets=["q", "qkv"]))


def test_lora_without_a_base_is_refused() -> None:
    from trainer.config import TrainConfig

    cfg = TrainConfig()
    cfg.lora.rank = 4
    with pytest.raises(JobError, match=r"without train\.init"):
        prepare_lora(_tiny(), cfg, 0, None)


LORA = (
    "--set",
    "train.lora.rank=4",
    "--set",
    "train.lora.alpha=8",
    "--set",
    "train.steps=4",
    "--set",
    "train.keep_checkpoints=0",
)


def _ckpt_bytes(run: Path, step: int) -> int:
    d = run / "checkpoints" / f"step-{step:08d}"
    return sum(f.stat().st_size for f in d.iterdir() if "optim" in f.name or "model" in f.name)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_lora_run_trains_only_adapters_saves_them_alone_resumes_exactly_and_merges(
    latents: Path,
    tmp_path: Path,
) -> None:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from safetensors.torch import save_file

    from trainer.sample import generate, load_model
    from trainer.sample_config import SampleConfig
    from trainer.vae.config import VAEConfig
    from trainer.vae.model import CausalVAE
    from trainer.vae.pretrained import VideoVAE
    from trainer.weights import load_weights

    _run(_cmd(1, latents, tmp_path, "base", 2, "--set", "train.steps=4"))
    base = tmp_path / "base"
    # Uninterrupted: 2 ranks, ZeRO-3, the engine's whole module dumped at the last save.
    _run(
        _cmd(2, latents, tmp_path, "ref", 3, *LORA, "--init", str(base)),
        env=fault_env("dump@4"),
    )
    ref = tmp_path / "ref"
    held = torch.load(ref / "weights-step-4.pt")
    init, _, _ = load_weights(base)  # the base's EMA (train.init_weights' default)
    # Only the adapters moved: every base weight the engine holds is the init's, bit for bit.
    for k, v in held.items():
        if not lora.is_adapter_key(k):
            assert torch.equal(v, init[k.replace(".base_layer", "")]), k
    moved = [k for k in held if ".lora_B." in k and held[k].abs().max() > 0]
    assert len(moved) == len([k for k in held if ".lora_B." in k])  # every B left zero

    # The checkpoint holds the adapters alone, raw and EMA.
    ck = get_fp32_state_dict_from_zero_checkpoint(str(ref / "checkpoints"), tag="step-00000004")
    assert ck and all(lora.is_adapter_key(k) for k in ck)
    assert all(torch.equal(ck[k], held[k]) for k in ck)
    assert set(_ema(ref, 4)) == set(ck)
    full, small = _ckpt_bytes(base, 4), _ckpt_bytes(ref, 4)
    print(f"LoRA checkpoint {small} bytes vs the full model's {full} ({small / full:.1%})")
    assert small < full / 5

    # Killed (SIGKILL) after writing step 4, before publishing it: the relaunch resumes at 2.
    killed = _cmd(2, latents, tmp_path, "cut", 3, *LORA, "--init", str(base))
    with pytest.raises(AssertionError):
        _run(killed, env=fault_env("save:written@4"))
    log = _run([*killed, "--resume", "auto"])
    assert "resumed from step-00000002" in log
    cut = tmp_path / "cut"
    losses = [[h["loss"] for h in _state(r, 4)["history"]] for r in (cut, ref)]
    assert len(losses[0]) == 4 and losses[0] == losses[1]
    again = get_fp32_state_dict_from_zero_checkpoint(str(cut / "checkpoints"), tag="step-00000004")
    assert _equal(again, ck) and _equal(_ema(cut, 4), _ema(ref, 4))

    # ZeRO-2 on one rank trains the same adapters (the same global batches).
    _run(_cmd(1, latents, tmp_path, "z2", 2, *LORA, "--init", str(base)))
    z2 = tmp_path / "z2"
    assert [h["loss"] for h in _state(z2, 4)["history"]] == pytest.approx(losses[1], rel=1e-5)
    z2_ck = get_fp32_state_dict_from_zero_checkpoint(str(z2 / "checkpoints"), tag="step-00000004")
    assert set(z2_ck) == set(ck)
    assert max((z2_ck[k] - ck[k]).abs().max().item() for k in ck) < 1e-5

    # export --merge-lora: a plain model that samples what the adapted one samples.
    out = tmp_path / "merged"
    cli = [sys.executable, "-m", "infra.cli", "export", "--checkpoint", str(ref)]
    _run([*cli, "--output", str(out), "--merge-lora"])
    adapted, tcfg, which = load_model(ref)
    assert "LoRA adapters" in which and "EMA" in which
    merged, mcfg, _ = load_model(out)
    assert mcfg.lora.rank == 0 and not any("lora" in k for k in merged.state_dict())
    CausalVAE(VAEConfig.named("tiny")).save_pretrained(tmp_path / "vae")
    vae = VideoVAE(tmp_path / "vae")
    scfg = SampleConfig(frames=5, height=32, width=32, steps=4, guidance=2.0, seed=3)
    texts = [torch.randn(5, 384, generator=torch.Generator().manual_seed(0))]
    lat_a, _ = generate(adapted, tcfg, scfg, texts, vae)
    lat_m, _ = generate(merged, mcfg, scfg, texts, vae)
    assert (lat_a[0] - lat_m[0]).abs().max().item() < 1e-4
    # A base that changed under the run is refused by name.
    sd = init | {"final.bias": init["final.bias"] + 1}
    save_file(sd, str(base / "checkpoints" / "step-00000004" / "ema.safetensors"))
    with pytest.raises(JobError, match="base has changed"):
        load_model(ref)
