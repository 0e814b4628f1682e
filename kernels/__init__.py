"""kernels: attention dispatch and fused ops; the only package that imports flash_attn, xformers or
triton. Every fast path has a pure-PyTorch reference it is tested against."""

from kernels.attention import (
    Backend,
    BackendUnavailable,
    resolve_backend,
    use_backend,
    varlen_attention,
)

__all__ = ["Backend", "BackendUnavailable", "resolve_backend", "use_backend", "varlen_attention"]
