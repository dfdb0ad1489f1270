"""ScorePlan invariants: every target scored exactly once, with bounded window length and context."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pgolf.runtime import DistEnv
from pgolf.scoring.plan import sliding_plan


@settings(max_examples=300, deadline=None)
@given(n=st.integers(2, 5000), T=st.integers(1, 96), data=st.data())
def test_sliding_plan_covers_every_target_once(n, T, data):
    S = data.draw(st.integers(1, T))
    plan = sliding_plan(n, T, S)
    counts = np.zeros(n - 1, dtype=np.int64)
    for w in range(plan.num_windows):
        lo, hi = plan.scored_range(w)
        assert lo < hi  # no empty window is kept
        assert plan.wlen[w] <= T and plan.starts[w] + plan.wlen[w] <= n - 1
        if w > 0:
            assert plan.score_from[w] == T - S  # at least T - S tokens of context
        counts[lo:hi] += 1
    assert (counts == 1).all()
    assert (np.diff(plan.starts) == S).all()


@settings(max_examples=50, deadline=None)
@given(n=st.integers(2, 3000), T=st.integers(1, 64), world=st.integers(1, 8))
def test_rank_shares_partition_windows(n, T, world):
    plan = sliding_plan(n, T, max(1, T // 4))
    seen = []
    for r in range(world):
        lo, hi = plan.rank_windows(DistEnv(rank=r, world_size=world))
        seen.extend(range(lo, hi))
    assert seen == list(range(plan.num_windows))


def test_reference_geometry_2048_64():
    """The record setting on the dev validation stream: exact window count and tail."""
    n = 344_924
    plan = sliding_plan(n, 2048, 64)
    total = n - 1
    assert plan.starts[-1] + 2048 - 64 < total <= plan.starts[-1] + 2048
    assert plan.num_windows == (total - (2048 - 64) + 63) // 64
