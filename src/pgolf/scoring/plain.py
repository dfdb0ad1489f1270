"""Plain validation: non-overlapping windows of seq_len over the validation stream (docs/DESIGN.md#eval-plain).

The stream is truncated to ((N - 1) // T) * T + 1 tokens so (input, target) pairs tile exactly, as
the challenge's eval_val does; windows are split contiguously across ranks; every target is scored
once with its in-window context. Used for periodic validation during training and as the `plain`
evaluation mode.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pgolf.data.tokenizer import target_bytes_torch
from pgolf.runtime import DistEnv, autocast, rank_share
from pgolf.scoring.bpb import Score, ScoreAccumulator


@torch.no_grad()
def score_plain(model: torch.nn.Module, tokens: np.ndarray, seq_len: int, luts_t: dict, env: DistEnv, *,
                batch_seqs: int = 8, autocast_dtype: torch.dtype | None = None, max_tokens: int = 0) -> Score:
    """Mean NLL and BPB of `model` on the stream; the model returns logits (B, T, V)."""
    if max_tokens:
        tokens = tokens[:max_tokens]
    n_win = (len(tokens) - 1) // seq_len
    if n_win < 1:
        raise ValueError(f"validation stream of {len(tokens)} tokens is shorter than one window of {seq_len + 1}")
    lo, hi = rank_share(0, n_win, env)
    device = env.device
    acc = ScoreAccumulator(device)
    was_training = model.training
    model.eval()
    try:
        for b in range(lo, hi, batch_seqs):
            e = min(b + batch_seqs, hi)
            chunk = np.asarray(tokens[b * seq_len:e * seq_len + 1], dtype=np.int64)
            buf = torch.from_numpy(chunk).to(device)
            x = torch.stack([buf[i * seq_len:(i + 1) * seq_len] for i in range(e - b)])  # (B, T)
            y = torch.stack([buf[i * seq_len + 1:(i + 1) * seq_len + 1] for i in range(e - b)])  # (B, T)
            with autocast(device, autocast_dtype):
                logits = model(x)
            lg = logits.reshape(-1, logits.size(-1))
            lg = lg.to(torch.promote_types(lg.dtype, torch.float32))  # at least fp32
            nll = F.cross_entropy(lg, y.reshape(-1), reduction="none")
            acc.add(nll, target_bytes_torch(luts_t, x.reshape(-1), y.reshape(-1)))
    finally:
        model.train(was_training)
    return acc.all_reduce(env).result()
