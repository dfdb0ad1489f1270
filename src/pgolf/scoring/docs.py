"""Documents of the validation stream, and the `doc` mode's plan: sliding windows that never cross a document.

A document is the span from one BOS up to, not including, the next BOS; a stream that does not start
with BOS has a leading fragment, which is scored as a document of its own. Document d = stream[s, e)
owns the targets t in [s, min(e, N - 1)): its real tokens after the BOS and, as its last target, the next
document's BOS ("end of document"), so the documents' targets tile [0, N - 1) exactly and the byte
accounting is the stream's (docs/DESIGN.md#doc-isolated-attention).

`doc_plan` lays the sliding rule of `plan.sliding_plan` inside each document (window T, stride S): a
document's first window starts at its BOS, so its first target is predicted from the BOS alone; a
document longer than one window slides inside itself; no window's inputs reach into another document.
The result is an ordinary `ScorePlan`, so every window scorer, the exactly-once check and the audit's
probes work on it unchanged.
"""

from __future__ import annotations

import numpy as np

from pgolf.scoring.plan import ScorePlan, sliding_plan


def doc_spans(stream: np.ndarray, bos_id: int) -> np.ndarray:
    """(D, 2) int64 [start, end) of every document of the stream, in stream order."""
    n = len(stream)
    starts = np.flatnonzero(np.asarray(stream) == bos_id).astype(np.int64)
    if n and (len(starts) == 0 or starts[0] != 0):
        starts = np.concatenate([[0], starts]).astype(np.int64)
    ends = np.append(starts[1:], n).astype(np.int64)
    return np.stack([starts, ends], axis=1) if len(starts) else np.zeros((0, 2), np.int64)


def doc_targets(spans: np.ndarray, n_tokens: int) -> np.ndarray:
    """(D, 2) [lo, hi) of the targets each document owns (hi = lo for a lone final BOS)."""
    lo = spans[:, 0]
    return np.stack([lo, np.maximum(lo, np.minimum(spans[:, 1], n_tokens - 1))], axis=1)


def doc_plan(stream: np.ndarray, seq_len: int, stride: int, bos_id: int) -> ScorePlan:
    """Sliding windows of seq_len / stride laid inside every document (module docstring)."""
    n = len(stream)
    if n < 2:
        raise ValueError(f"the validation stream needs at least 2 tokens, got {n}")
    starts, wlen, score_from = [], [], []
    for lo, hi in doc_targets(doc_spans(stream, bos_id), n):
        if hi <= lo:
            continue
        local = sliding_plan(int(hi - lo) + 1, seq_len, stride)
        starts.append(local.starts + lo)
        wlen.append(local.wlen)
        score_from.append(local.score_from)
    return ScorePlan(n - 1, seq_len, stride, np.concatenate(starts), np.concatenate(wlen), np.concatenate(score_from))
