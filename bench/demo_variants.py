"""The variants `bench/demo_quality.py` trains and scores (issue 20): each a list of `--set`
overrides on the demo preset, one change at a time. Kept apart from the runner so the record of
what was tried (BENCHMARKS.md names every row here) does not crowd it."""

from __future__ import annotations

# The demo's VAE since round 1 of issue 20: 2x in time with learned pair mixing.
_LEARNED_2X = ["vae_train.time_stride=2", "vae_train.temporal_resample=learned"]
# Each variant names the preset it ran on: a 4x, 4-channel VAE, and the DiT of rounds 10-16
# (DiT-XS, 1x4x4 patches, AdamW, ZeRO 2, no contrastive term, an unweighted loss; rounds 1-9 ran
# 1x2x2, as BENCHMARKS.md says), so it reruns as measured whatever the demo preset ("preset"
# below) becomes.
_VAE_4X = ["vae_train.space_stride=4", "vae_train.latent_channels=0"]
_DIT_R14 = [
    "train.model.size=XS",
    "train.flow.foreground_weight=0",
    "train.model.patch=[1,4,4]",
    "train.optim.name=adamw",
    "train.zero_stage=2",
    "train.flow.contrastive=0",
    "train.optim.lr=1e-3",
    "train.data.token_budget=2048",
]
# Muon needs ZeRO 0 (trainer/muon.py); round 15's pair of changes to the DiT.
_MUON = ["train.optim.name=muon", "train.zero_stage=0"]
_MUON_CONTRASTIVE = [*_MUON, "train.flow.contrastive=0.05"]
# Round 17's pair of changes to the DiT (the demo preset since): 4 blocks, the object weighted 4.
_DEPTH_4_FG_4 = [*_DIT_R14, "train.model.size=XS-shallow", "train.flow.foreground_weight=4"]
# Round 18's preset, pinned as measured, and round 19's (its lr 3x).
_DEPTH_4_FG_4_MUON_CONTRASTIVE = [*_DEPTH_4_FG_4, *_MUON_CONTRASTIVE]
_R19 = [*_DEPTH_4_FG_4_MUON_CONTRASTIVE, "train.optim.lr=3e-3"]
# Round 20's DiT (the preset's, on the folded VAE "preset + patch 2"): half round 19's batch.
_R20 = [*_R19, "train.data.token_budget=1024"]

_VAE_8X = [
    *_VAE_4X,
    *_LEARNED_2X,
    "vae_train.steps=1200",
    "vae_train.space_stride=8",
    "vae_train.latent_channels=16",
]
_CROP_48 = ["vae_train.crop=48", "vae_train.batch_size=4"]
_FG_4 = ["vae_train.foreground_weight=4"]
_FG_4_M0 = [*_FG_4, "vae_train.foreground_margin=0"]
_FG_4_M2 = [*_FG_4, "vae_train.foreground_margin=2"]

VAE_VARIANTS: dict[str, list[str]] = {
    "preset": [],
    "demo": [*_VAE_4X],
    "8 latent channels": [*_VAE_4X, "vae_train.latent_channels=8"],
    "9-frame crops": [*_VAE_4X, "vae_train.frames=9"],
    "time stride 2": [*_VAE_4X, "vae_train.time_stride=2"],
    "time stride 2 + 9-frame crops": [*_VAE_4X, "vae_train.time_stride=2", "vae_train.frames=9"],
    "time stride 2 + crop 48": [*_VAE_4X, "vae_train.time_stride=2", "vae_train.crop=48"],
    "time stride 2 + lr 3e-3": [*_VAE_4X, "vae_train.time_stride=2", "vae_train.lr=3e-3"],
    "time stride 2 + 2400 steps": [*_VAE_4X, "vae_train.time_stride=2", "vae_train.steps=2400"],
    "learned resample": [*_VAE_4X, "vae_train.temporal_resample=learned"],
    "time stride 2 + learned resample": _LEARNED_2X,
    # Round 20: pixels folded 2x2 into channels before the first convolution (and unfolded after
    # the last), so no convolution runs at full size: half the FLOPs a step. The preset since; the
    # VAE of rounds 1-19 without it.
    "preset + patch 2": ["vae_train.patch=2"],
    "round 19 (no patch)": ["vae_train.patch=1"],
    # Round 21: the DiT draws squares with round corners; the folded VAE's reconstructions keep
    # about half a square's corner fill (0.53 against the data's 1.00). Weigh the object's pixels
    # 4x in its loss (round 16 did so for the 8x VAE: shape 58% -> 96% at 1800 steps).
    "preset + foreground 4": ["vae_train.foreground_weight=4.0"],
    "time stride 2 + learned resample + 1200 steps": [
        *_VAE_4X,
        *_LEARNED_2X,
        "vae_train.steps=1200",
    ],
    # 2x in space instead of 4x: an object of 16-21 px spans 8-10 latent pixels, not 4-5, so a
    # one-latent-pixel error (which erases a shape at 4x, round 10) is a 2 px blur.
    "time stride 2 + space stride 2 + learned resample + 1200 steps": [
        *_VAE_4X,
        *_LEARNED_2X,
        "vae_train.space_stride=2",
        "vae_train.steps=1200",
    ],
    # An L1 loss on the error's differences between neighbouring pixels: MSE alone rounds the
    # corners of a square (the VAE's squares fill 0.4 of their corner cells, a sharp one 1.0).
    "time stride 2 + learned resample + 1200 steps + spatial 0.1": [
        *_VAE_4X,
        *_LEARNED_2X,
        "vae_train.steps=1200",
        "vae_train.spatial_weight=0.1",
    ],
    "time stride 2 + learned resample + 1200 steps + spatial 0.5": [
        *_VAE_4X,
        *_LEARNED_2X,
        "vae_train.steps=1200",
        "vae_train.spatial_weight=0.5",
    ],
    "time stride 2 + learned resample + 2400 steps": [
        *_VAE_4X,
        *_LEARNED_2X,
        "vae_train.steps=2400",
    ],
    # 8x in space with 16 channels: an object of 16-21 px spans 2-3 latent pixels, so its shape
    # cannot live in the latent's spatial detail (the last thing a DiT draws, round 10) and must
    # be carried in the channels, as colour is (learned by the DiT in 150 steps).
    "time stride 2 + learned resample + 1200 steps + space stride 8 + 16 channels": [
        *_VAE_4X,
        *_LEARNED_2X,
        "vae_train.steps=1200",
        "vae_train.space_stride=8",
        "vae_train.latent_channels=16",
    ],
    # Round 16: how reliable the 8x VAE is (its demo run decoded blue as cyan, round 15), over
    # seeds, and with the 4x VAE's training time spent on more steps.
    "8x16 seed 1": [*_VAE_8X, "vae_train.seed=1"],
    "8x16 seed 2": [*_VAE_8X, "vae_train.seed=2"],
    "8x16 1800 steps": [*_VAE_8X, "vae_train.steps=1800"],
    "8x16 1800 steps seed 1": [*_VAE_8X, "vae_train.steps=1800", "vae_train.seed=1"],
    "8x16 1800 steps seed 2": [*_VAE_8X, "vae_train.steps=1800", "vae_train.seed=2"],
    # A 32 px crop is a 4x4 latent at 8x (every latent pixel at the border) and often misses the
    # object; 48 px crops at half the batch cost about as much a step.
    "8x16 crop 48 batch 4": [*_VAE_8X, *_CROP_48],
    "8x16 crop 48 batch 4 seed 1": [*_VAE_8X, *_CROP_48, "vae_train.seed=1"],
    "8x16 crop 48 batch 4 seed 2": [*_VAE_8X, *_CROP_48, "vae_train.seed=2"],
    # The object's pixels weigh 4x the background's in the reconstruction error: alone (margin
    # 0), then with the 2 px around it.
    "8x16 foreground 4": [*_VAE_8X, *_FG_4_M0],
    "8x16 foreground 4 seed 1": [
        *_VAE_8X,
        *_FG_4_M0,
        "vae_train.seed=1",
    ],
    "8x16 foreground 4 seed 2": [
        *_VAE_8X,
        *_FG_4_M0,
        "vae_train.seed=2",
    ],
    "8x16 foreground 4 margin 2": [*_VAE_8X, *_FG_4_M2],
    "8x16 foreground 4 margin 2 seed 1": [*_VAE_8X, *_FG_4_M2, "vae_train.seed=1"],
    "8x16 foreground 4 margin 2 seed 2": [*_VAE_8X, *_FG_4_M2, "vae_train.seed=2"],
    # Margin 0 at 1800 steps (the 4x VAE's 1200 steps' time): colour from the weighting, shape
    # from the steps.
    "8x16 foreground 4 1800 steps": [*_VAE_8X, *_FG_4_M0, "vae_train.steps=1800"],
    "8x16 foreground 4 1800 steps seed 1": [
        *_VAE_8X,
        *_FG_4_M0,
        "vae_train.steps=1800",
        "vae_train.seed=1",
    ],
    "8x16 foreground 4 1800 steps seed 2": [
        *_VAE_8X,
        *_FG_4_M0,
        "vae_train.steps=1800",
        "vae_train.seed=2",
    ],
    # 16x in space with 64 channels: an object is one or two latent pixels, its shape a code in
    # the channels.
    "time stride 2 + learned resample + 1200 steps + space stride 16 + 64 channels": [
        *_VAE_4X,
        *_LEARNED_2X,
        "vae_train.steps=1200",
        "vae_train.space_stride=16",
        "vae_train.latent_channels=64",
    ],
}
DIT_VARIANTS: dict[str, list[str]] = {
    "preset": [],
    "EMA without warm-up (before)": [*_DIT_R14, "train.ema_warmup=false"],
    "EMA warm-up": [*_DIT_R14],
    "EMA warm-up + cosine lr": [*_DIT_R14, "train.optim.schedule=cosine"],
    "EMA warm-up + lr 2e-3": [*_DIT_R14, "train.optim.lr=2e-3"],
    "EMA warm-up + lr 3e-3": [*_DIT_R14, "train.optim.lr=3e-3"],
    "no EMA (raw weights)": [*_DIT_R14, "train.ema_decay=0"],
    "logit-normal timesteps": [*_DIT_R14, "train.flow.timestep_sampling=logit_normal"],
    "patch 1x1x1": [*_DIT_R14, "train.model.patch=[1,1,1]"],
    # The demo's samples are 9x16x16 latents at 1x2x2 patches, 576 tokens: above the 256-token
    # base, the flow's resolution shift moves their timesteps toward noise.
    "no resolution time shift": [*_DIT_R14, "train.flow.shift_base_tokens=0"],
    "lr 2e-3 without EMA": [*_DIT_R14, "train.optim.lr=2e-3", "train.ema_decay=0"],
    # 4x4 latent pixels per token: a 64x64 clip is 144 tokens instead of 576, so a step of the
    # same token budget holds ~5x the clips. (Measured with the guard off: its spike rule ended
    # this run at step 49, inside the warm-up, before the guard stopped judging spikes there.)
    "patch 1x4x4": [*_DIT_R14, "train.model.patch=[1,4,4]", "train.guard.enabled=false"],
    # Fractional positions along the (t, h, w) diagonals too: a motion's sign as one feature.
    "diagonal positions": [*_DIT_R14, "train.model.frac_pos_diagonals=true"],
    # Without the flow's resolution shift, more of the draws fall at low noise, where outlines are drawn.
    "diagonal positions + no resolution time shift": [
        *_DIT_R14,
        "train.model.frac_pos_diagonals=true",
        "train.flow.shift_base_tokens=0",
    ],
    # The other way: a stronger shift (3x instead of 1.5x at the samples' 576 tokens), more draws
    # at high noise, where the caption decides what is drawn.
    "diagonal positions + shift base 64 tokens": [
        *_DIT_R14,
        "train.model.frac_pos_diagonals=true",
        "train.flow.shift_base_tokens=64",
    ],
    "diagonal positions + patch 1x4x4": [
        *_DIT_R14,
        "train.model.frac_pos_diagonals=true",
        "train.model.patch=[1,4,4]",
    ],
    # The loss weighted toward the object's tokens (1 + 4 x distance from the grey background):
    # a shape's outline is a few of a clip's tokens.
    "foreground weight 4": [*_DIT_R14, "train.flow.foreground_weight=4"],
    # The source captions ("a red circle moving left") instead of the recaption stage's paragraph.
    "short captions": [*_DIT_R14],
    "videos + stills (half the samples)": [*_DIT_R14],
    "videos + stills (80% of samples)": [*_DIT_R14],
    # 4x4 latent pixels per token with the shift's base cut to 16 tokens (these samples' 3x shift,
    # as at 1x2x2 with base 64): x0 prediction + patch 1x4x4 below without the x0 prediction. The
    # demo preset since round 10, kept here as round 10 ran it (guard off).
    "patch 1x4x4 + shift base 16 tokens": [
        *_DIT_R14,
        "train.guard.enabled=false",
        "train.model.patch=[1,4,4]",
        "train.flow.shift_base_tokens=16",
    ],
    # The model outputs the clean latent, not the velocity (Li & He 2025's x-prediction): at high
    # noise, where the caption alone decides the shape, it need not also carry the noise through.
    # (With the spike guard on, its first run was ended at step 74 by three skipped steps right
    # after the warm-up, gradient norms 13-25 against a running median of 0.77 that still held
    # the warm-up's norms; the guard no longer keeps those, but round 10 ran these variants
    # without it and that is how they stay, so their rows can be rerun as measured.)
    "x0 prediction": [*_DIT_R14, "train.flow.prediction=x0", "train.guard.enabled=false"],
    # ... with 4x4 latent pixels per token (144 tokens per 64x64 clip, 4x the clips per step), the
    # shift's base cut to 16 tokens to keep these samples' 3x shift.
    "x0 prediction + patch 1x4x4": [
        *_DIT_R14,
        "train.flow.prediction=x0",
        "train.guard.enabled=false",
        "train.model.patch=[1,4,4]",
        "train.flow.shift_base_tokens=16",
    ],
    # 8x8 latent pixels per token (36 tokens per 64x64 clip): the object is one to four tokens,
    # painted by the output layer (256 values per token from a 128-wide model: x0 prediction, as
    # Li & He 2025 pair with patches wider than the model); the shift's base 4 keeps 3x.
    "x0 prediction + patch 1x8x8": [
        *_DIT_R14,
        "train.flow.prediction=x0",
        "train.guard.enabled=false",
        "train.model.patch=[1,8,8]",
        "train.flow.shift_base_tokens=4",
    ],
    # From the preset (1x4x4, guard on): the shift at base 4 tokens, 6x at these samples' 144
    # tokens instead of 3x: still more draws at the high noise where a shape is decided (round 7).
    "shift base 4 tokens": [*_DIT_R14, "train.flow.shift_base_tokens=4"],
    # The preset (1x4x4) on the source captions: round 8 ran "short captions" at 1x2x2.
    "short captions at patch 1x4x4": [*_DIT_R14],
    # bf16 weights and activations (DeepSpeed's bf16 mode): on a CPU with AVX512-BF16 a bf16
    # matmul runs ~4x an fp32 one (850-890 vs 200-210 GFLOP/s on this session's EPYC).
    "bf16": [*_DIT_R14, "train.precision=bf16"],
    # Width: 6 x 192 instead of 6 x 128 (2.25x the parameters, ~2x a step's matmuls).
    "width 192": [*_DIT_R14, "train.model.size=XS-wide"],
    # Twice the clips per step (4,096-token micro-batches, twice a step's cost): is shape limited
    # by steps or by the samples seen?
    "token budget 4096": [*_DIT_R14, "train.data.token_budget=4096"],
    # Half the clips per step (1,024-token micro-batches, about half a step's cost).
    "token budget 1024": [*_DIT_R14, "train.data.token_budget=1024"],
    # The preset with another seed (initialisation, data order, noise): how far one run's
    # scores move by chance (runs with one seed repeat to the digit).
    "seed 1": [*_DIT_R14, "run.seed=1"],
    # With a 2x-in-space VAE: 8x8 latent pixels per token, the same 16x16 pixels and 144 tokens
    # per sample as the preset's 1x4x4 on the 4x VAE.
    "patch 1x8x8": [*_DIT_R14, "train.model.patch=[1,8,8]"],
    # The model also sees its own previous estimate of the clean latent (on half the steps in
    # training, every step but the first when sampling).
    "self-conditioning": [*_DIT_R14, "train.model.self_condition=true"],
    # A weaker shift (1.5x at 144 tokens): more training draws at mid and low noise, where a
    # square's corners (the finest detail of the three shapes) appear.
    "shift base 64 tokens": [*_DIT_R14, "train.flow.shift_base_tokens=64"],
    # Adam's second moment over ~100 steps instead of ~1000: the early steps' large gradients stop
    # shrinking the later steps sooner.
    "Adam beta2 0.99": [*_DIT_R14, "train.optim.betas=[0.9,0.99]"],
    # U-ViT's 3x3 convolution on the output latent: the samples' outlines are ragged at token
    # borders and the background carries token-sized texture.
    "conv head": [*_DIT_R14, "train.model.conv_head=true"],
    # Muon on the blocks' matrices, AdamW on the rest (trainer/muon.py), at ZeRO 0: its updates
    # are orthogonalised, which trains language models in ~1/1.4-1/2 the steps of AdamW.
    "Muon": [*_DIT_R14, *_MUON],
    # Contrastive flow matching (Stoica et al. 2025) at their weight: each prediction is also
    # pushed away from another sample's target, so what all clips share cannot carry it; the
    # caption's shape word must (round 13: the shape is decided by the caption at mid noise).
    "contrastive 0.05": [*_DIT_R14, "train.flow.contrastive=0.05"],
    "contrastive 0.2": [*_DIT_R14, "train.flow.contrastive=0.2"],
    # The three that each read a few points above the preset at 900 steps (round 15), together,
    # on the 8x VAE.
    "patch 1x2x2 + Muon + contrastive 0.05": [
        *_DIT_R14,
        "train.model.patch=[1,2,2]",
        *_MUON_CONTRASTIVE,
    ],
    # On the 4x VAE (whose blues stay blue): Muon and the contrastive term alone.
    "Muon + contrastive 0.05": [*_DIT_R14, *_MUON_CONTRASTIVE],
    "patch 1x2x2 + Muon + contrastive 0.05 + seed 1": [
        *_DIT_R14,
        "train.model.patch=[1,2,2]",
        *_MUON_CONTRASTIVE,
        "run.seed=1",
    ],
    # On the 8x VAE: 2x2 latent pixels per token are the same 16x16 pixels and 144 tokens per
    # sample as the preset's 1x4x4 on the 4x VAE.
    "patch 1x2x2": [*_DIT_R14, "train.model.patch=[1,2,2]"],
    "patch 1x2x2 + seed 1": [*_DIT_R14, "train.model.patch=[1,2,2]", "run.seed=1"],
    # On the 16x VAE: one latent pixel per token, again 16x16 pixels and 144 tokens per sample.
    "patch 1x1x1 (16x VAE)": [*_DIT_R14, "train.model.patch=[1,1,1]"],
    # Cheaper steps: 4 blocks instead of 6 (0.67x a step's time) or width 96 instead of 128 (0.76x):
    # width 192 learned no faster per step (round 11), so a smaller model may buy steps for free.
    "depth 4": [*_DIT_R14, "train.model.size=XS-shallow"],
    "width 96": [*_DIT_R14, "train.model.size=XS-narrow"],
    "depth 4 + foreground weight 4": _DEPTH_4_FG_4,
    "depth 4 + foreground weight 4 + seed 1": [*_DEPTH_4_FG_4, "run.seed=1"],
    # Round 18: a third seed of the preset, and Muon with the contrastive term (round 16's pair)
    # on the preset's 4-block, object-weighted model.
    "depth 4 + foreground weight 4 + seed 2": [*_DEPTH_4_FG_4, "run.seed=2"],
    "depth 4 + foreground weight 4 + Muon + contrastive 0.05": _DEPTH_4_FG_4_MUON_CONTRASTIVE,
    "depth 4 + foreground weight 4 + Muon + contrastive 0.05 + seed 1": [
        *_DEPTH_4_FG_4_MUON_CONTRASTIVE,
        "run.seed=1",
    ],
    # Round 19: the preset's peak learning rate, raised (Muon's update is matched to AdamW's size,
    # so one lr serves both halves; Muon is known to tolerate larger steps than AdamW).
    "depth 4 + foreground weight 4 + Muon + contrastive 0.05 + lr 2e-3": [
        *_DEPTH_4_FG_4_MUON_CONTRASTIVE,
        "train.optim.lr=2e-3",
    ],
    "depth 4 + foreground weight 4 + Muon + contrastive 0.05 + lr 3e-3": _R19,
    # Two more seeds of lr 3e-3, trained after Muon's orthogonalisation moved to fp32 on CPU (the
    # two rows above ran torch's bf16 one).
    "depth 4 + foreground weight 4 + Muon + contrastive 0.05 + lr 3e-3 + seed 1": [
        *_R19,
        "run.seed=1",
    ],
    "depth 4 + foreground weight 4 + Muon + contrastive 0.05 + lr 3e-3 + seed 2": [
        *_R19,
        "run.seed=2",
    ],
    # Round 20: half the batch (a micro-batch of 1024 tokens a rank, ~7 clips), so a step costs
    # about half: is shape learned per step or per clip seen?
    "round 19 + half batch": _R20,
    "round 19 + half batch + seed 1": [*_R20, "run.seed=1"],
    # Round 21: at the slow machine's ~1000 steps, does ending the run annealed (cosine to 0.1x
    # over the run's steps) read more shapes than the constant rate?
    "round 20 + cosine": [*_R20, "train.optim.schedule=cosine"],
    "round 20 + cosine + seed 1": [*_R20, "train.optim.schedule=cosine", "run.seed=1"],
    # Half the batch again (~3.5 clips a micro-batch): round 20's half batch learned more per clip
    # seen; a step's fixed costs (Muon's orthogonalisation) make it ~0.65x, not 0.5x.
    "round 20 + token budget 512": [*_R20, "train.data.token_budget=512"],
    "round 20 + token budget 512 + seed 1": [*_R20, "train.data.token_budget=512", "run.seed=1"],
    # Twice the contrastive term: each prediction pushed harder from another clip's target, so
    # the caption's shape word must carry more (the held-out misses are squares drawn round).
    "round 20 + contrastive 0.1": [*_R20, "train.flow.contrastive=0.1"],
    "round 20 + contrastive 0.1 + seed 1": [*_R20, "train.flow.contrastive=0.1", "run.seed=1"],
    "round 20 + contrastive 0.1 + seed 2": [*_R20, "train.flow.contrastive=0.1", "run.seed=2"],
    "round 20 + seed 2": [*_R20, "run.seed=2"],
    # Twice again (round 23): 0.1 read more held-out draws than 0.05 on every seed.
    "round 20 + contrastive 0.2": [*_R20, "train.flow.contrastive=0.2"],
    "round 20 + contrastive 0.2 + seed 1": [*_R20, "train.flow.contrastive=0.2", "run.seed=1"],
    "round 20 + contrastive 0.2 + seed 2": [*_R20, "train.flow.contrastive=0.2", "run.seed=2"],
    # Round 26: the preset on the 6-token source captions ("a green square moving up"): in the
    # recaption paragraph the colour and the direction are said twice more ("mostly green", "moves
    # up"), the shape once, so ~55 text tokens carry colour and direction and one carries shape.
    "short captions + round 20 + contrastive 0.1": [*_R20, "train.flow.contrastive=0.1"],
    "short captions + round 20 + contrastive 0.1 + seed 1": [
        *_R20,
        "train.flow.contrastive=0.1",
        "run.seed=1",
    ],
    "short captions + round 20 + contrastive 0.1 + seed 2": [
        *_R20,
        "train.flow.contrastive=0.1",
        "run.seed=2",
    ],
    # Squares are the shape missed most (drawn with round corners, read as circles): weight the
    # object's tokens twice as much again.
    "round 20 + foreground weight 8": [*_R20, "train.flow.foreground_weight=8.0"],
    "round 20 + foreground weight 8 + seed 1": [
        *_R20,
        "train.flow.foreground_weight=8.0",
        "run.seed=1",
    ],
    # Two latent frames per token at half the token budget: the same ~28 clips a micro-batch at
    # about half a step's cost (shape rises with optimizer steps, round 15). The shift's base
    # halves with the tokens (3x at 19 frames' 80 tokens); 19 frames as 17 leave an odd 9 latent
    # frames.
    "patch 2x4x4 + token budget 1024": [
        *_DIT_R14,
        "train.model.patch=[2,4,4]",
        "train.data.token_budget=1024",
        "train.flow.shift_base_tokens=8",
        "sample.frames=19",
    ],
}
# Variants that train on a mixture of the videos and still images: the stills' share of samples
# and how many stills.
STILLS_VARIANTS: dict[str, tuple[float, int]] = {
    "videos + stills (half the samples)": (0.5, 2 * 192),
    # At 1x4x4 a 64x64 still is 16 tokens against a clip's 144: four stills in five samples put
    # ~40 still frames beside ~10 clips in a micro-batch, each showing a shape.
    "videos + stills (80% of samples)": (0.8, 2000),
}
