"""Symmetric per-row integer grids and their clip rules (docs/DESIGN.md#quant-schemes, 5.3).

A b-bit grid has the integers [-qmax, qmax] with qmax = 2^(b-1) - 1 (int6: [-31, 31], 63 levels; int8:
[-127, 127]); -2^(b-1) is never used, so the grid is symmetric. One scale per output row:

    q = clamp(round(w / s_r), -qmax, qmax)      w_hat = q * s_r

Scales are stored as fp16 and used in fp32 (`scales_from_clip` rounds them), so what is scored after a
reload is exactly what was chosen here. The floor keeps an all-zero (or tiny) row away from a zero scale;
it is never below the smallest positive fp16 (2^-24), which is where fp16 rounding would otherwise
produce a zero.

Clip rules (the clip c_r is the largest |w| that is represented without saturation; s_r = c_r / qmax):
- percentile: candidates = row quantiles of |w| at 0.999, 0.9995, 0.9999, 0.99999 and the row max
  (PR #1019); the caller picks the candidate with the lowest error (`rtn_quantize`, `gptq_quantize`).
- sdclip: c_r = k * std(row) (k = 12.85 for int6 matrices, 20 for int8 tables; records #1413/#1493).
- single percentile: c_r = row quantile of |w| at q (the int8 tables use q = 0.9999984).
"""

from __future__ import annotations

import torch
from torch import Tensor

CLIP_QUANTILES = (0.999, 0.9995, 0.9999, 0.99999)
"""Row quantiles of |w| tried by the percentile clip search; the row max is the fifth candidate."""
EMBED_QUANTILE = 0.9999984
"""The int8 tables' clip: the 99.99984th percentile of |w| per row (docs/DESIGN.md#quant-schemes)."""
FP16_TINY = 2.0**-24
"""Smallest positive fp16 (subnormal): the lowest scale that survives fp16 storage."""


def qmax_for(bits: int) -> int:
    """Largest grid integer of a symmetric b-bit grid: 2^(b-1) - 1 (int6 -> 31, int8 -> 127)."""
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be in [2, 8] (int8 containers), got {bits}")
    return 2 ** (bits - 1) - 1


def row_quantile(A: Tensor, q: float) -> Tensor:
    """Per-row quantile of A (rows, cols) with linear interpolation (torch.quantile's default), via sort.

    torch.quantile refuses inputs above 2^24 elements; a sort has no such limit.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {q}")
    S = A.sort(dim=1).values  # (rows, cols) ascending
    n = S.size(1)
    pos = q * (n - 1)
    lo = int(pos)
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    return S[:, lo] + (S[:, hi] - S[:, lo]) * frac  # (rows,)


def scales_from_clip(clip: Tensor, bits: int, scale_floor: float) -> Tensor:
    """Row clips (rows,) -> fp16 scales (rows,): s = max(c / qmax, floor), rounded to fp16 (finite, > 0)."""
    floor = max(float(scale_floor), FP16_TINY)
    s = (clip.float() / qmax_for(bits)).clamp(min=floor, max=float(torch.finfo(torch.float16).max))
    s16 = s.to(torch.float16)
    # Round-to-nearest may still land on 0 just above the floor (fp16 subnormal spacing); lift it.
    return torch.where(s16 > 0, s16, torch.full_like(s16, FP16_TINY))


def percentile_clip_candidates(W: Tensor) -> Tensor:
    """(rows, cols) -> (5, rows) clip candidates: row quantiles of |W| at CLIP_QUANTILES, then the row max."""
    A = W.detach().abs().float()
    cands = [row_quantile(A, q) for q in CLIP_QUANTILES]
    cands.append(A.amax(dim=1))
    return torch.stack(cands)


def sdclip_clip(W: Tensor, k: float) -> Tensor:
    """SDClip (records #1413/#1493): c_r = k * std(row) (population std), so s_r = k * std / qmax."""
    return k * W.detach().float().std(dim=1, correction=0)


def candidate_scales(W: Tensor, bits: int, clip: str, sdclip_k: float, scale_floor: float) -> Tensor:
    """(n_candidates, rows) fp16 scales for a clip rule: 5 candidates for "percentile", 1 for "sdclip"."""
    if clip == "percentile":
        clips = percentile_clip_candidates(W)
    elif clip == "sdclip":
        clips = sdclip_clip(W, sdclip_k)[None]
    else:
        raise ValueError(f"clip must be 'percentile' or 'sdclip', got {clip!r}")
    return scales_from_clip(clips, bits, scale_floor)


def quantize_rtn(W: Tensor, bits: int, scales: Tensor) -> Tensor:
    """Round-to-nearest on the grid: W (rows, cols) float, scales (rows,) -> Q int8 (rows, cols).

    Computed in fp32 (or fp64 for an fp64 W): q = clamp(round(w / s), -qmax, qmax); round is
    half-to-even (torch.round), as in `gptq_quantize`.
    """
    qmax = qmax_for(bits)
    work = torch.float64 if W.dtype == torch.float64 else torch.float32
    s = scales.to(work)[:, None]  # (rows, 1)
    return torch.clamp(torch.round(W.to(work) / s), -qmax, qmax).to(torch.int8)


def dequantize(Q: Tensor, scales: Tensor) -> Tensor:
    """Q int (rows, cols), fp16 scales (rows,) -> fp32 (rows, cols) = q * s (the scale used in fp32)."""
    return Q.float() * scales.float()[:, None]


def weight_mse(W: Tensor, Q: Tensor, s: Tensor) -> float:
    """Plain (unweighted) mean of (W - Q s)^2, summed in float64 so the choice is order-independent."""
    return float((W.double() - Q.double() * s.double()[:, None]).square().mean())


def rtn_quantize(W: Tensor, *, bits: int, clip: str = "percentile", sdclip_k: float = 12.85,
                 scale_floor: float = 1e-8, select: str = "matrix") -> tuple[Tensor, Tensor]:
    """Round-to-nearest with the clip search: -> (Q int8 (rows, cols), scales fp16 (rows,)).

    select="matrix" keeps, per matrix, the candidate with the lowest plain weight MSE; "row" keeps, per
    row, the one with the lowest squared weight error (the selection rules of `gptq_quantize`, so GPTQ
    with H = I returns exactly this).
    """
    W = W.detach()
    cand = candidate_scales(W, bits, clip, sdclip_k, scale_floor)  # (C, rows)
    if select == "row":
        Qc = torch.stack([quantize_rtn(W, bits, s) for s in cand])  # (C, rows, cols)
        D = W.double()[None] - Qc.double() * cand.double()[:, :, None]
        idx = torch.argmin(D.square().sum(-1), dim=0)  # (rows,)
        r = torch.arange(W.size(0), device=W.device)
        return Qc[idx, r], cand[idx, r].clone()
    if select != "matrix":
        raise ValueError(f"select must be 'matrix' or 'row', got {select!r}")
    best: tuple[float, Tensor, Tensor] | None = None
    for s in cand:
        Q = quantize_rtn(W, bits, s)
        mse = weight_mse(W, Q, s)
        if best is None or mse < best[0]:
            best = (mse, Q, s)
    assert best is not None
    return best[1], best[2]


def row_clip_quantize(W: Tensor, *, bits: int, clip: str = "percentile", sdclip_k: float = 20.0,
                      scale_floor: float = 1e-8, quantile: float = EMBED_QUANTILE) -> tuple[Tensor, Tensor]:
    """One-clip per-row RTN for tables (docs/DESIGN.md#quant-schemes): percentile clip at `quantile` or SDClip with k."""
    if clip not in ("percentile", "sdclip"):
        raise ValueError(f"clip must be 'percentile' or 'sdclip', got {clip!r}")
    W = W.detach()
    clips = row_quantile(W.abs().float(), quantile) if clip == "percentile" else sdclip_clip(W, sdclip_k)
    s = scales_from_clip(clips, bits, scale_floor)
    return quantize_rtn(W, bits, s), s
