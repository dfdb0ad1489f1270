"""Optional fast kernels behind one switch, each with its eager twin (the default in layers.py).

Selected once by the trainer; the choice and any fallback are logged, never silent.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def _fa3() -> Callable[[Tensor, Tensor, Tensor], Tensor] | None:
    try:
        import flash_attn_interface  # FlashAttention-3 (Hopper); not on PyPI
    except ImportError:
        return None

    def fa3_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        # q (B, T, H, Dh), k/v (B, T, Hkv, Dh); FA3 handles GQA natively and wants bf16/fp16 inputs.
        dtype = q.dtype if q.dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
        out = flash_attn_interface.flash_attn_func(q.to(dtype), k.to(dtype), v.to(dtype), causal=True)
        if isinstance(out, tuple):  # some FA3 builds return (out, softmax_lse)
            out = out[0]
        return out.to(q.dtype)

    return fa3_attention


def select_attention(kind: str, device: torch.device) -> tuple[Callable | None, str, str | None]:
    """-> (attn_impl or None for the SDPA default, name, warning or None).

    kind: "auto" (FA3 on CUDA when importable, else SDPA), "fa3" (required), "sdpa".
    """
    if kind == "sdpa":
        return None, "sdpa", None
    if device.type != "cuda":
        if kind == "fa3":
            raise ValueError("train.attention=fa3 needs a CUDA device")
        return None, "sdpa", None
    impl = _fa3()
    if impl is None:
        if kind == "fa3":
            raise ValueError("train.attention=fa3 but flash_attn_interface (FlashAttention-3) is not importable")
        return None, "sdpa", "WARNING: FlashAttention-3 not importable; using torch SDPA attention"
    return impl, "fa3", None
