"""Window scoring over a ScorePlan: the `plain` and `sliding` evaluation modes (docs/DESIGN.md#eval-sliding).

Windows are batched (padded to the plan's seq_len so every forward has the same length, which also
keeps the NTK-rescaled RoPE base identical across windows), split contiguously across ranks, and
each scored target contributes its full-softmax NLL and its LUT bytes to one float64 accumulator.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from pgolf.data.tokenizer import target_bytes_torch
from pgolf.runtime import DistEnv, autocast
from pgolf.scoring.bpb import SCORED_TAP, Score, ScoreAccumulator
from pgolf.scoring.plan import ScorePlan


def window_batch(stream: np.ndarray, plan: ScorePlan, idx: range, device) -> tuple[torch.Tensor, torch.Tensor,
                                                                                     torch.Tensor]:
    """-> x (B, L) inputs, y (B, L) targets, scored (B, L) bool; L = min(seq_len, n_targets), zero padded."""
    L = min(plan.seq_len, plan.n_targets)
    B = len(idx)
    x = np.zeros((B, L), dtype=np.int64)
    y = np.zeros((B, L), dtype=np.int64)
    scored = np.zeros((B, L), dtype=bool)
    for r, w in enumerate(idx):
        ws, n = int(plan.starts[w]), int(plan.wlen[w])
        seg = np.asarray(stream[ws:ws + n + 1], dtype=np.int64)
        x[r, :n] = seg[:-1]
        y[r, :n] = seg[1:]
        scored[r, int(plan.score_from[w]):n] = True
    return (torch.from_numpy(x).to(device), torch.from_numpy(y).to(device), torch.from_numpy(scored).to(device))


def accumulate_scored(logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor, scored: torch.Tensor,
                      plan: ScorePlan, idx: range, luts_t: dict, acc: ScoreAccumulator,
                      nll_out: np.ndarray | None = None) -> torch.Tensor:
    """Full-softmax NLL (at least fp32) and LUT bytes of a batch's scored positions into `acc`;
    optionally write each NLL at its stream-order index. Returns the scored NLLs (n_scored,)."""
    sel = scored.reshape(-1)
    lg = logits.reshape(-1, logits.size(-1))[sel]  # (n_scored, V)
    lg = lg.to(torch.promote_types(lg.dtype, torch.float32))
    tgt = y.reshape(-1)[sel]
    nll = F.cross_entropy(lg, tgt, reduction="none")
    acc.add(nll, target_bytes_torch(luts_t, x.reshape(-1)[sel], tgt))
    if nll_out is not None:
        pos = (torch.as_tensor(plan.starts[idx.start:idx.stop], device=x.device)[:, None]
               + torch.arange(x.size(1), device=x.device)[None, :]).reshape(-1)[sel]
        nll_out[pos.cpu().numpy()] = nll.double().cpu().numpy()
        if (tap := SCORED_TAP.get()) is not None:
            tap(pos, F.log_softmax(lg, -1))
    return nll


@torch.no_grad()
def score_windows(logits_fn: Callable[[torch.Tensor], torch.Tensor], stream: np.ndarray, plan: ScorePlan,
                  luts_t: dict, env: DistEnv, *, batch_windows: int = 32, autocast_dtype: torch.dtype | None = None,
                  nll_out: np.ndarray | None = None, progress=None) -> Score:
    """Score every window of this rank's share of the plan. logits_fn: x (B, L) -> logits (B, L, V).

    nll_out: optional float64 array of length plan.n_targets; this rank's scored targets are written at
    their stream-order index (target t = stream[t + 1]).
    """
    device = env.device
    acc = ScoreAccumulator(device)
    lo, hi = plan.rank_windows(env)
    for b in range(lo, hi, batch_windows):
        idx = range(b, min(b + batch_windows, hi))
        x, y, scored = window_batch(stream, plan, idx, device)
        with autocast(device, autocast_dtype):
            logits = logits_fn(x)
        accumulate_scored(logits, x, y, scored, plan, idx, luts_t, acc, nll_out)
        if progress is not None:
            progress.update(len(idx))
    return acc.all_reduce(env).result()
