"""Optional fast kernels behind one switch, each with its eager twin (the default in layers.py).

Selected once by the trainer; the choice and any fallback are logged, never silent.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from pgolf.model.attention import DocSegments, sdpa_attention


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


def _flex() -> Callable | None:
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError:
        return None

    def flex_doc_attention(q: Tensor, k: Tensor, v: Tensor, segments: DocSegments | None = None) -> Tensor:
        """Document-isolated causal attention as a FlexAttention block mask (built once per forward, shared
        by every layer through the segments object); blocks that cross no document are skipped."""
        if segments is None:
            return sdpa_attention(q, k, v)
        mask = segments.cache.get("flex")
        if mask is None:
            ids = segments.ids

            def doc_causal(b, h, qi, ki):
                return (qi >= ki) & (ids[b, qi] == ids[b, ki])

            n, t = ids.shape
            mask = segments.cache["flex"] = create_block_mask(doc_causal, n, None, t, t, device=q.device)
        y = flex_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=mask,
                           enable_gqa=q.size(2) != k.size(2))
        return y.transpose(1, 2)

    return flex_doc_attention


def select_attention(kind: str, device: torch.device, doc_isolation: bool = False
                     ) -> tuple[Callable | None, str, str | None]:
    """-> (attn_impl or None for the SDPA default, name, warning or None).

    kind: "auto" (FA3 on CUDA when importable, else SDPA), "fa3" (required), "sdpa". With document
    isolation (model.doc_isolation): FlexAttention block masks on CUDA ("auto"), else SDPA with the explicit
    document mask (on CPU the fastest measured, dev/LOG.md); FA3 has no document mask here.
    """
    if doc_isolation:
        if kind == "fa3":
            raise ValueError("train.attention=fa3 has no document mask; use auto or sdpa with model.doc_isolation")
        impl = _flex() if device.type == "cuda" and kind == "auto" else None
        if impl is not None:
            return impl, "flex-doc", None
        return None, "sdpa-doc-mask", None
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
