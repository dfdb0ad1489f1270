"""Causal attention kernels, document segments, and the KV cache slot (shapes: see `pgolf.model.layers`).

An attention kernel (`AttnImpl`) maps q (B, T, H, Dh), k and v (B, T, Hkv, Dh) and optional document
segments to (B, T, H, Dh), softmax scale 1/sqrt(Dh); kv head g serves query heads g*G .. g*G+G-1.
Without segments attention is plainly causal. With `DocSegments` (model.doc_isolation,
docs/DESIGN.md#doc-isolated-attention) query t sees key s only if s <= t and both lie in the same
document segment: a segment starts at every BOS and at position 0 (a window that starts inside a
document is its own segment). `sdpa_attention` applies that as an explicit boolean mask; the FlexAttention
kernel in `pgolf.model.kernels` applies the same rule as a block mask.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class DocSegments:
    """Document segment of every position of a batch: ids (B, T) int64, +1 at every BOS."""

    ids: Tensor
    _mask: Tensor | None = field(default=None, repr=False)
    cache: dict = field(default_factory=dict, repr=False)
    """Per-forward state of an attention kernel (e.g. a FlexAttention block mask), shared by the layers."""

    @staticmethod
    def of(idx: Tensor, bos_id: int) -> DocSegments:
        """idx (B, T) tokens -> their segments (position 0 opens a segment whether or not it is a BOS)."""
        return DocSegments(torch.cumsum((idx == bos_id).to(torch.int64), dim=1))

    def mask(self) -> Tensor:
        """(B, 1, T, T) bool: query t may attend key s (s <= t, same segment); built once, shared by all layers."""
        if self._mask is None:
            t = self.ids.size(1)
            causal = torch.ones(t, t, dtype=torch.bool, device=self.ids.device).tril()
            self._mask = (causal[None] & (self.ids[:, :, None] == self.ids[:, None, :]))[:, None]
        return self._mask

    def narrow(self, start: int) -> DocSegments:
        """Segments of positions start .. T-1 (the queries of an incremental decoding step)."""
        return DocSegments(self.ids[:, start:])


AttnImpl = Callable[..., Tensor]
"""(q, k, v, segments: DocSegments | None = None) -> attention output; see the module docstring."""


def _repeat_kv(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    g = q.size(2) // k.size(2)
    if g > 1:
        k = k.repeat_interleave(g, dim=2)  # (B, T, H, Dh)
        v = v.repeat_interleave(g, dim=2)  # (B, T, H, Dh)
    return k, v


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, segments: DocSegments | None = None) -> Tensor:
    """Default AttnImpl: torch SDPA, causal, or with the document mask when `segments` is given.

    GQA is done by repeat_interleave of k/v rather than `enable_gqa=True`, because not every SDPA
    backend accepts enable_gqa; the copy is cheap next to the matmuls and the FA3 path avoids it.
    """
    k, v = _repeat_kv(q, k, v)
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if segments is None:
        y = F.scaled_dot_product_attention(qt, kt, vt, is_causal=True)
    else:
        y = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=segments.mask())
    return y.transpose(1, 2)  # (B, T, H, Dh)


class KVSlot:
    """One layer's key/value cache for incremental decoding (self-generated calibration, `GPT.decode_hidden`).

    Buffers (B, max_len, Hkv, Dh) are allocated on the first write, in the dtype of the keys (bf16 under
    autocast). `attend` stores the new positions' k, v at pos .. pos+T-1 and runs attention of their
    queries over positions 0 .. pos+T-1 with the causal mask inside the new block (and, with document
    segments, only within each query's segment), which is the same attention the full forward computes
    for those rows. The caller advances `pos` (`KVCache`).
    """

    def __init__(self, max_len: int) -> None:
        self.max_len = max_len
        self.pos = 0
        self.k: Tensor | None = None
        self.v: Tensor | None = None

    def attend(self, q: Tensor, k: Tensor, v: Tensor, segments: DocSegments | None = None) -> Tensor:
        """q (B, T, H, Dh), k/v (B, T, Hkv, Dh) of positions pos .. pos+T-1 -> (B, T, H, Dh).

        segments: the segments of ALL positions 0 .. pos+T-1 (document isolation), or None."""
        b, t, hkv, dh = k.shape
        end = self.pos + t
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} positions > max_len {self.max_len}")
        if self.k is None or self.v is None:
            self.k = k.new_empty(b, self.max_len, hkv, dh)
            self.v = v.new_empty(b, self.max_len, hkv, dh)
        self.k[:, self.pos:end] = k
        self.v[:, self.pos:end] = v
        keys, values = _repeat_kv(q, self.k[:, :end], self.v[:, :end])  # (B, end, H, Dh)
        # Row i of the new block (position pos + i) sees cache positions 0 .. pos + i.
        mask = torch.ones(t, end, dtype=torch.bool, device=q.device).tril(diagonal=self.pos)  # (T, end)
        if segments is not None:
            ids = segments.ids[:, :end]  # (B, end)
            mask = (mask[None] & (ids[:, self.pos:end, None] == ids[:, None, :]))[:, None]  # (B, 1, T, end)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2),
                                           attn_mask=mask)
        return y.transpose(1, 2)  # (B, T, H, Dh)
