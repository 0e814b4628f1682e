"""Memory per rank: the model `spacetime train --dry-run` prints (does this configuration fit a
device?) and the measurement every run records in train_summary.json (what it did use).

The model has two parts. Model states are counted analytically from DeepSpeed's layout (below).
Activations are counted, not guessed: one and two DiT blocks at the run's width and precision run
forward on a few dozen tokens under autograd's saved-tensor hooks, which see exactly what the
backward pass will keep; two token counts and two text lengths give bytes per video token and per
text token, a block and the layers outside the blocks. Every attention backend spacetime uses
(FlashAttention, xformers, SDPA's flash kernel on CPU) keeps O(tokens) for backward, so bytes grow
linearly with tokens; the `reference` backend's (L x L) scores are not modelled.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any

import torch

from trainer.config import TrainConfig
from trainer.model.dit import DiT
from trainer.model.packing import pack

GIB = 2**30


def state_bytes(
    n: int, world: int, stage: int, bf16: bool, offload: bool, bucket: int
) -> dict[str, int]:
    """Bytes per rank of parameters, gradients, optimizer states and ZeRO's buffers, for `n`
    parameters on `world` ranks (`host_offload`: what optimizer offload keeps in host memory).

    DeepSpeed's layout, per parameter, p = 2 (bf16) or 4 (fp32) bytes: the model's parameters (p;
    ZeRO-3 keeps 1/world of them); gradients (p, fp32 when bf16 accumulates; ZeRO 1-3 keep 1/world,
    as stage 1 shares stage 2's code in DeepSpeed and reduces bucket by bucket during backward:
    measured equal; from stage 1 also the fp32 master's own gradient partition, 4/world, kept
    between steps);
    a separate fp32 master copy (4: every ZeRO stage >= 1 clones its partition, even in fp32; stage
    0 in fp32 updates the parameters themselves) and Adam's two moments (8), both 1/world from
    stage 1. Buffers alive during backward: ZeRO-1/2's reduce bucket, ZeRO-3's reduce bucket and
    the parameters it gathers for the layers being computed (prefetch + live, a bucket each).
    After backward, transiently: stage 0's flat copy of every gradient for its all-reduce (at most
    DeepSpeed's 500M-element bucket); from stage 1, the fp32 gradient partition DeepSpeed hands
    the optimizer for its step (torch's fused AdamW adds no temporaries; its for-loop form added
    two more partitions, measured)."""
    p = 2 if bf16 else 4
    g = 4 if bf16 else p
    shard = world if stage >= 1 else 1
    params = n * p if stage < 3 else n * p // world
    grads = n * g if stage == 0 else n * g // world + 4 * n // world
    master = (n * 4 if (bf16 or stage >= 1) else 0) // shard
    adam = n * 8 // shard
    during_backward = {0: 0, 1: bucket * g, 2: bucket * g, 3: bucket * g + 2 * bucket * p}[stage]
    flat = min(n, 500_000_000) * g if stage == 0 and world > 1 else 0
    step_temp = 4 * n // world if stage >= 1 else 0
    host = 0
    if offload:
        host, master, adam, step_temp = master + adam, 0, 0, 0
    return {
        "parameters": params,
        "gradients": grads,
        "optimizer": master + adam,
        "zero_buffers": during_backward,
        "after_backward_transient": max(flat, step_temp),
        "host_offload": host,
    }


@dataclass
class ActivationProfile:
    """Bytes autograd keeps for backward: per video token and per text token, in one block and
    outside the blocks (embeddings, final layer), and per video token of a checkpointed block."""

    block_per_token: float
    block_per_text: float
    outside_per_token: float
    outside_per_text: float
    checkpoint_per_token: float


def _saved_bytes(model: DiT, n: int, m: int, samples: int, dtype: torch.dtype) -> int:
    """Bytes of the distinct tensors autograd saves in one forward (parameters excluded)."""
    params = {q.untyped_storage().data_ptr() for q in model.parameters()}
    c = model.cfg.in_channels
    per = n // samples
    latents = [torch.zeros(c, 1, 2, 2 * per) for _ in range(samples)]  # `per` tokens each (1x2x2)
    texts = [torch.zeros(m // samples, model.cfg.text_dim) for _ in range(samples)]
    tokens, batch = pack(latents, texts, model.cfg.patch)
    seen: dict[int, int] = {}

    def keep(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = max(seen.get(ptr, 0), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        model(tokens.to(dtype).requires_grad_(), torch.full((samples,), 500.0, dtype=dtype), batch)
    return sum(seen.values())


def _probe_model(cfg: TrainConfig, blocks: int, dtype: torch.dtype) -> DiT:
    with torch.device("meta"):
        model = DiT(replace(cfg.model, in_channels=cfg.model.in_channels or 4))
    model.blocks = model.blocks[:blocks]
    model = model.to_empty(device="cpu").to(dtype)
    model.initialize_weights()
    return model


def activation_profile(cfg: TrainConfig, dtype: torch.dtype) -> ActivationProfile:
    """Measured on 1 and 2 blocks at the run's width, on 2 samples of 32/64 tokens and 8/24 text
    tokens each: small enough for a laptop's dry run of DiT-XL (two blocks, ~0.3 GB)."""
    n0, n1, m0, m1, b = 64, 128, 16, 48, 2
    one, two = _probe_model(cfg, 1, dtype), _probe_model(cfg, 2, dtype)
    s = {
        (k, n, m): _saved_bytes(mod, n, m, b, dtype)
        for k, mod in ((1, one), (2, two))
        for n, m in ((n0, m0), (n1, m0), (n0, m1))
    }
    block = {key: s[(2, *key[1:])] - s[(1, *key[1:])] for key in s if key[0] == 1}
    block_tok = (block[(1, n1, m0)] - block[(1, n0, m0)]) / (n1 - n0)
    block_txt = (block[(1, n0, m1)] - block[(1, n0, m0)]) / (m1 - m0)
    out = {key: s[key] - block[key] for key in block}
    out_tok = (out[(1, n1, m0)] - out[(1, n0, m0)]) / (n1 - n0)
    out_txt = (out[(1, n0, m1)] - out[(1, n0, m0)]) / (m1 - m0)
    hidden = cfg.model.dims[1]
    return ActivationProfile(
        block_tok, block_txt, out_tok, out_txt, hidden * torch.finfo(dtype).bits / 8
    )


def activation_bytes(
    cfg: TrainConfig, prof: ActivationProfile, tokens: int, text_tokens: int
) -> int:
    """Peak bytes of activations on one rank for a micro-batch of `tokens` local video tokens and
    `text_tokens` text tokens (each rank of a sequence-parallel group keeps all of its group's text).

    Without checkpointing every block's saved tensors are alive when backward starts. With it, a
    block keeps only its input; backward recomputes one block at a time, whose saved tensors are
    then alive next to the other blocks' inputs. Backward's own working memory (the gradients of a
    block's intermediates) adds about one block's saved tensors in both cases."""
    depth = cfg.model.dims[0]
    block = prof.block_per_token * tokens + prof.block_per_text * text_tokens
    outside = prof.outside_per_token * tokens + prof.outside_per_text * text_tokens
    if cfg.activation_checkpointing:
        kept = depth * prof.checkpoint_per_token * tokens + block
    else:
        kept = depth * block
    return int(kept + outside + block)


def estimate(
    cfg: TrainConfig,
    world: int,
    num_params: int,
    bucket: int,
    bf16: bool,
    text_tokens_per_pack: int,
    prof: ActivationProfile | None = None,
) -> dict[str, Any]:
    """The dry run's memory table (bytes per rank) and its step-time prediction."""
    dtype = torch.bfloat16 if bf16 else torch.float32
    prof = prof or activation_profile(cfg, dtype)
    sp = cfg.parallel.sequence
    tokens = -(-cfg.data.token_budget // sp)
    states = state_bytes(num_params, world, cfg.zero_stage, bf16, cfg.offload_optimizer, bucket)
    acts = activation_bytes(cfg, prof, tokens, text_tokens_per_pack)
    resident = states["parameters"] + states["gradients"] + states["optimizer"]
    # The peak is in backward (activations, ZeRO's buckets) or just after it (all-reduce copy,
    # optimizer temporaries), whichever is larger: activations are freed by then.
    backward = resident + states["zero_buffers"] + acts
    after = resident + states["after_backward_transient"]
    return {
        **states,
        "activations": acts,
        "device_total": max(backward, after),
        "peak_phase": "backward" if backward >= after else "after backward",
        "tokens_per_rank": tokens,
    }


# ----------------------------------------------------------------------------- measurement


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


class PeakMemory:
    """What this rank used: on GPU, the caching allocator's peak; on CPU the resident set's high
    water mark (reset through /proc/self/clear_refs) less the file-backed pages resident at the
    end (the libraries' code, paged in as kernels first run, is not memory the model uses; at the
    peak there were at most that many), both above the level at `start()` (after imports, before
    the model is built)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.base = 0
        self.available = self.cuda or os.path.exists("/proc/self/clear_refs")

    def start(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        elif self.available:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # resets VmHWM to the current resident set
            except OSError:  # not allowed here (some containers): no CPU measurement
                self.available = False
                return
            self.base = _status_kib("RssAnon")

    def peak(self) -> int | None:
        if self.cuda:
            return torch.cuda.max_memory_allocated() - self.base
        if self.available:
            file_backed = _status_kib("RssFile") + _status_kib("RssShmem")
            return _status_kib("VmHWM") - file_backed - self.base
        return None
