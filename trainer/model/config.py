"""Shape of the spacetime DiT (no torch import: the CLI and config loader read it)."""

from __future__ import annotations

from dataclasses import dataclass, field

# DiT's named sizes (depth, hidden, heads), plus a tiny one for tests.
SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (2, 64, 4),
    "XS": (6, 128, 4),  # the CPU demo until issue 20's round 17
    "XS-wide": (6, 192, 4),  # XS at 1.5x its width (issue 20's width ablation)
    "XS-narrow": (6, 96, 4),  # XS at 0.75x its width: a cheaper step
    "XS-shallow": (4, 128, 4),  # the CPU demo: XS at 2/3 its depth, 0.67-0.73x a step
    "S": (12, 384, 6),
    "B": (12, 768, 12),
    "L": (24, 1024, 16),
    "XL": (28, 1152, 16),
}


@dataclass
class DiTConfig:
    """Shape of the denoiser."""

    size: str = "tiny"
    """Named size (depth, hidden, heads): tiny, XS, XS-wide, XS-narrow, XS-shallow, S, B, L, XL."""
    in_channels: int = 0
    """Latent channels; 0: the trainer takes them from the latents (the VAE's latent channels:
    4 for spacetime's, 16 for Wan's and HunyuanVideo's)."""
    latent_space: str = ""
    """Tag of the VAE whose latents the model learns (trainer.vae.pretrained.vae_identity); set by
    the trainer from the data. Sampling, previews and resumes refuse another VAE."""
    patch: tuple[int, int, int] = (1, 2, 2)
    """Patch size (pt, ph, pw) in latent frames and pixels."""
    text_dim: int = 384
    """Width of the text encoder's token embeddings (MiniLM: 384)."""
    mlp_ratio: float = 4.0
    """MLP hidden width as a multiple of the model width."""
    rope_theta: float = 10000.0
    """RoPE base."""
    frac_pos: bool = True
    """NaViT's fractional positions: each token's (t, h, w) as a fraction of its sample's grid,
    embedded and added to its patch embedding. RoPE alone gives only relative positions, so a
    token on a plain background cannot tell the frame's edge from its centre; layout words
    ("moving left": starts at the right edge) need absolute, resolution-free positions."""
    frac_pos_diagonals: bool = False
    """Also embed the fractional position along the six diagonals of (t, h, w) (t+w, t-w, ...).
    From per-axis features alone the embedding is a sum f(t) + g(h) + k(w), so "at the right edge
    early and the left edge late" (a motion's sign) is a product the blocks must build; along the
    t-w and t+w diagonals a rightward and a leftward track are each one feature."""
    self_condition: bool = False
    """Self-conditioning (Chen et al. 2023, "Analog Bits"): the model also takes its own previous
    estimate of the clean latent as input (a zero-initialised linear embedding added to the patch
    embedding). Training feeds it, on half the steps, the estimate of a no-gradient pass of the
    same noisy input; the sampler feeds each step the previous step's estimate. Flow models only."""
    conv_head: bool = False
    """A 3x3 convolution over each frame of the output latent, added to the output projection
    (U-ViT, Bao et al. 2023): neighbouring tokens' pixels are drawn together, not each token's
    patch on its own. Zero-initialised; not with sequence parallelism (it needs the neighbours)."""
    attn_backend: str = "auto"
    """kernels.varlen_attention backend: auto, flash3, flash2, torch_varlen, xformers, flex,
    sdpa, reference."""
    fused_impl: str = "auto"
    """kernels.fused implementation: auto, triton, torch."""

    def validate(self) -> None:
        if self.in_channels < 0:
            raise ValueError(
                f"in_channels must be >= 0 (0: from the latents), got {self.in_channels}"
            )
        if self.size not in SIZES:
            raise ValueError(f"size must be one of {', '.join(SIZES)}, got {self.size!r}")
        _, hidden, heads = SIZES[self.size]
        if (hidden // heads) % 2:
            raise ValueError("head dim must be even for RoPE")

    @property
    def dims(self) -> tuple[int, int, int]:
        return SIZES[self.size]

    @property
    def patch_dim(self) -> int:
        return self.in_channels * self.patch[0] * self.patch[1] * self.patch[2]


# The DiT's projections by their module names: attention (self and cross) and the MLP.
LORA_TARGETS = ("q", "kv", "out", "mlp.0", "mlp.2")


@dataclass
class LoraConfig:
    """Low-rank adapters on the DiT's projections (`train.lora`; trainer/lora.py, via peft)."""

    rank: int = 0
    """Adapter rank; 0: off (a full fine-tune or training from scratch)."""
    alpha: float = 0.0
    """Scale numerator: the update is (alpha / rank) * B @ A; 0: alpha = rank (scale 1)."""
    targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    """Module names (or name suffixes) of the linears that get adapters: q, kv, out (attention,
    self and cross), mlp.0, mlp.2."""
    dropout: float = 0.0
    """Dropout on the adapter's input (0: none; nonzero draws from the global RNG)."""

    def validate(self) -> None:
        if self.rank < 0 or self.alpha < 0 or not 0 <= self.dropout < 1:
            raise ValueError("train.lora: rank >= 0, alpha >= 0, 0 <= dropout < 1")
        if self.rank and not self.targets:
            raise ValueError("train.lora.targets: name at least one projection")
