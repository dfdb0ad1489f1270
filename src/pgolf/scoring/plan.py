"""ScorePlan: which targets each evaluation window scores. Every method consumes one.

Indexing: the validation stream has N tokens; target t (t = 0 .. N-2) is token stream[t + 1],
predicted from stream[0 .. t]. A window with start ws and length wlen feeds inputs
stream[ws : ws + wlen] and sees targets t in [ws, ws + wlen); it SCORES targets
[ws + score_from, ws + wlen). Its earlier targets [ws, ws + score_from) were scored by earlier
windows, which is what makes them legal adaptation data for causal SLOT (docs/DESIGN.md#slot-legality).

Sliding windows of length T and stride S (docs/DESIGN.md#eval-sliding), with the fixed tail rule: starts
ws = 0, S, 2S, ... are kept while ws == 0 or ws + T - S < N - 1; window 0 scores all its targets,
every other window scores from relative position T - S to its end. The scored ranges tile
[0, N - 1) exactly: each target is scored once, with at least T - S tokens of context after the
first window. S == T gives plain non-overlapping windows covering every target (the challenge's
plain eval drops the last partial window; this plan scores it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pgolf.runtime import DistEnv, rank_share


@dataclass(frozen=True)
class ScorePlan:
    n_targets: int
    seq_len: int
    stride: int
    starts: np.ndarray  # (W,) int64 window start ws
    wlen: np.ndarray  # (W,) int64 window length <= seq_len
    score_from: np.ndarray  # (W,) int64 first scored relative position

    @property
    def num_windows(self) -> int:
        return len(self.starts)

    def scored_range(self, w: int) -> tuple[int, int]:
        """Absolute target range [lo, hi) scored by window w."""
        ws = int(self.starts[w])
        return ws + int(self.score_from[w]), ws + int(self.wlen[w])

    def rank_windows(self, env: DistEnv) -> tuple[int, int]:
        """This rank's contiguous share of windows [lo, hi)."""
        return rank_share(0, self.num_windows, env)


def sliding_plan(n_tokens: int, seq_len: int, stride: int) -> ScorePlan:
    if n_tokens < 2:
        raise ValueError(f"the validation stream needs at least 2 tokens, got {n_tokens}")
    if not 1 <= stride <= seq_len:
        raise ValueError(f"stride must be in [1, seq_len={seq_len}], got {stride}")
    total = n_tokens - 1
    keep = seq_len - stride
    if total <= seq_len:
        starts = np.zeros(1, dtype=np.int64)
    else:
        # ws = k*S for k >= 1 is kept while ws + T - S < total, i.e. k < (total - keep) / S.
        last = -(-(total - keep) // stride) - 1  # largest k with k*S + keep < total
        starts = np.arange(0, last + 1, dtype=np.int64) * stride
    wlen = np.minimum(seq_len, total - starts)
    score_from = np.where(starts == 0, 0, keep).astype(np.int64)
    return ScorePlan(total, seq_len, stride, starts, wlen.astype(np.int64), score_from)


def plain_plan(n_tokens: int, seq_len: int) -> ScorePlan:
    return sliding_plan(n_tokens, seq_len, seq_len)
