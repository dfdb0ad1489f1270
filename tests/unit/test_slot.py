"""Causal SLOT: pipeline flip test and self-prediction test (STACK.md 8.5), normalization, coverage,
no coupling between windows, the NON-COMPLIANT shared reference mode, world-size invariance."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pgolf.config import SlotConfig
from pgolf.runtime import DistEnv
from pgolf.scoring.bpb import ScoreAccumulator
from pgolf.scoring.modes import SHARED_SLOT, SLOT_COMPLIANT, noncompliant
from pgolf.scoring.plan import sliding_plan
from pgolf.scoring.sliding import score_windows
from pgolf.scoring.slot import SlotRunner, score_slot, segments
from tests.helpers.dist import spawn_gloo
from tests.helpers.models import BW, FLIPS, FOCAL, S, T, flipped, make_data, make_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup():
    stream, luts_t = make_data()
    return make_model(), stream, luts_t, sliding_plan(len(stream), T, S)


def run(model, stream, plan, luts_t, cfg, bw=BW, env=None, **kw):
    nll = np.full(plan.n_targets, np.nan)
    score, info = score_slot(model, stream, plan, luts_t, env or DistEnv(), cfg, batch_windows=bw, nll_out=nll, **kw)
    return score, info, nll


CAUSAL_CFGS = {
    "single": SlotConfig(phase_iters=(25,), phase_history=(20,), phase_alpha=(0.0,), focal=FOCAL),
    "cascade_weighted": SlotConfig(phase_iters=(5, 18), phase_history=(10, 20), phase_alpha=(0.0, 0.5),
                                   focal=FOCAL),
    "armijo_focal0": SlotConfig(phase_iters=(4, 6), phase_history=(5, 5), phase_alpha=(0.0, 0.0), focal=0,
                                line_search="armijo"),
    "hidden": SlotConfig(phase_iters=(3, 5), phase_history=(5, 5), phase_alpha=(0.0, 0.0), focal=FOCAL,
                         space="hidden"),
}


@pytest.mark.parametrize("name", list(CAUSAL_CFGS))
def test_flip_leaves_earlier_targets_identical(setup, name):
    model, stream, luts_t, plan = setup
    cfg = CAUSAL_CFGS[name]
    _, info, base = run(model, stream, plan, luts_t, cfg, warm_segments=2)
    assert info["compliant"] is True and info["label"] == SLOT_COMPLIANT
    assert info["adapt_nll_after"] < info["adapt_nll_before"]  # the fit does something
    for m in FLIPS:
        _, _, nll = run(model, flipped(stream, m), plan, luts_t, cfg, warm_segments=2)
        # target t = stream[t + 1]: targets t <= m - 2 never see token m
        assert np.array_equal(nll[:m - 1], base[:m - 1]), (name, m, np.abs(nll[:m - 1] - base[:m - 1]).max())
        assert nll[m - 1] != base[m - 1]  # the flipped target itself did change


def test_shared_reference_mode_leaks(setup):
    model, stream, luts_t, plan = setup
    cfg = SlotConfig(phase_iters=(5, 18), phase_history=(10, 20), phase_alpha=(0.0, 0.0), focal=FOCAL,
                     coupling="shared")
    _, info, base = run(model, stream, plan, luts_t, cfg, warm_segments=2)
    assert info["compliant"] is False and info["label"] == noncompliant(SHARED_SLOT)
    # target 128 is window 6's first scored target and inside window 7's adaptation range (same batch):
    # flipping it moves the shared delta and so the scores of windows 4-6, i.e. EARLIER targets
    m = 129
    _, _, nll = run(model, flipped(stream, m), plan, luts_t, cfg, warm_segments=2)
    changed = np.nonzero(nll[:m - 1] != base[:m - 1])[0]
    assert len(changed) > 0 and changed.min() >= 96  # batch 1 starts at target 96
    assert np.abs(nll[:m - 1] - base[:m - 1]).max() > 1e-6


def _self_prediction(model, stream, plan, luts_t, cfg, t, seed):
    """Score with the true stream, adapt on a copy whose tokens after target t are random."""
    rng = np.random.default_rng(seed)
    adapt = stream.copy()
    adapt[t + 1:] = rng.integers(0, 512, len(stream) - t - 1)
    nll = np.full(plan.n_targets, np.nan)
    runner = SlotRunner(model, stream, plan, luts_t, cfg, torch.device("cpu"), nll_out=nll, adapt_stream=adapt)
    runner.score_range(0, plan.num_windows, DistEnv(), BW, 2, ScoreAccumulator())
    return nll


def test_self_prediction(setup):
    """The score of target t does not depend on what the adaptation path is told about x_t (or later)."""
    model, stream, luts_t, plan = setup
    _, _, base = run(model, stream, plan, luts_t, CAUSAL_CFGS["cascade_weighted"], warm_segments=2)
    for t in (100, 140, 200):
        nll = _self_prediction(model, stream, plan, luts_t, CAUSAL_CFGS["cascade_weighted"], t, seed=t)
        assert np.array_equal(nll[:t + 1], base[:t + 1])
        assert not np.array_equal(nll, base)  # later windows do adapt on the random copy
    # the shared reference mode: scoring target 140 with an adaptation that saw the true answer is
    # better than with adaptations that saw random answers (a positive self-prediction advantage)
    shared = SlotConfig(phase_iters=(5, 18), phase_history=(10, 20), phase_alpha=(0.0, 0.0), focal=FOCAL,
                        coupling="shared")
    _, _, true_nll = run(model, stream, plan, luts_t, shared, warm_segments=2)
    lo, hi = 96, 140  # batch 1's scored targets before t = 140 (windows 4-6 adapt on targets up to 143)
    wrong = [_self_prediction(model, stream, plan, luts_t, shared, lo, seed=s) for s in range(4)]
    advantage = np.mean([w[lo:hi].mean() for w in wrong]) - true_nll[lo:hi].mean()
    print(f"shared-delta self-prediction advantage: {advantage:.4f} nats")
    assert advantage > 0.01


def test_full_softmax_normalized_and_matches_saved_nll(setup):
    model, stream, luts_t, plan = setup
    for cfg in (CAUSAL_CFGS["cascade_weighted"], CAUSAL_CFGS["hidden"]):
        nll = np.full(plan.n_targets, np.nan)
        runner = SlotRunner(model, stream, plan, luts_t, cfg, torch.device("cpu"), nll_out=nll)
        idx = range(4, 8)
        delta = runner.score_batch(idx, None, ScoreAccumulator())
        assert delta.abs().max().item() <= cfg.clamp
        bt = runner._prepare(idx)
        with torch.no_grad():
            logp = F.log_softmax(runner._logits(bt.base, delta), -1)  # (B, P, V)
        sums = logp.exp().sum(-1)
        assert (sums - 1).abs().max().item() < 1e-6
        sel = bt.score_mask
        pos = (bt.starts[:, None] + bt.a + torch.arange(sel.size(1))[None, :])[sel].numpy()
        ref = -logp[sel].gather(-1, bt.y[sel][:, None])[:, 0].numpy()
        np.testing.assert_allclose(nll[pos], ref, rtol=0, atol=1e-12)


def test_tiny_clamp_equals_sliding_and_covers_every_target(setup):
    model, stream, luts_t, plan = setup
    ref = np.full(plan.n_targets, np.nan)
    s0 = score_windows(model, stream, plan, luts_t, DistEnv(), batch_windows=BW, nll_out=ref)
    for space in ("logit", "hidden"):
        cfg = SlotConfig(phase_iters=(3,), phase_history=(5,), phase_alpha=(0.0,), focal=FOCAL, clamp=1e-300,
                         space=space)
        score, info, nll = run(model, stream, plan, luts_t, cfg)
        assert np.count_nonzero(~np.isnan(nll)) == plan.n_targets == score.targets
        assert score.bytes == s0.bytes
        np.testing.assert_allclose(nll, ref, rtol=0, atol=1e-12)
        assert info["windows"] == plan.num_windows


def test_window_delta_does_not_depend_on_its_batch(setup):
    """Without warm start each window's result is the same alone, in a batch of 4, or in one batch."""
    model, stream, luts_t, plan = setup
    cfg = SlotConfig(phase_iters=(5, 18), phase_history=(10, 20), phase_alpha=(0.0, 0.5), focal=FOCAL,
                     warm_start=False)
    outs = [run(model, stream, plan, luts_t, cfg, bw=bw)[2] for bw in (1, 4, plan.num_windows)]
    np.testing.assert_allclose(outs[1], outs[0], rtol=0, atol=1e-10)
    np.testing.assert_allclose(outs[2], outs[0], rtol=0, atol=1e-10)


def test_segments_are_a_function_of_the_plan():
    assert segments(0, 17, 4, 2) == [(0, 8), (8, 17)]
    assert segments(0, 17, 4, 8) == [(0, 4), (4, 8), (8, 12), (12, 16), (16, 17)]
    assert segments(5, 6, 4, 3) == [(5, 6)]


def _rank_slot(env, stream, luts_t, warm_segments):
    torch.set_num_threads(1)
    model = make_model()
    plan = sliding_plan(len(stream), T, S)
    cfg = SlotConfig(phase_iters=(5, 18), phase_history=(10, 20), phase_alpha=(0.0, 0.5), focal=FOCAL)
    score, info, nll = run(model, stream, plan, luts_t, cfg, env=env, warm_segments=warm_segments)
    return score.nats, score.targets, score.bytes, nll, info["windows"]


@pytest.mark.dist
def test_two_ranks_equal_one_rank():
    stream, luts_t = make_data()
    for ws in (2, 3):
        outs = spawn_gloo(2, _rank_slot, stream, luts_t, ws, timeout=120)
        single = _rank_slot(DistEnv(), stream, luts_t, ws)
        assert outs[0][1:3] == outs[1][1:3] == single[1:3]
        assert outs[0][0] == pytest.approx(single[0], rel=1e-12)
        assert outs[0][4] == single[4]
        both = np.where(np.isnan(outs[0][3]), outs[1][3], outs[0][3])
        assert not np.isnan(both).any()
        assert np.array_equal(both, single[3])


def test_adaptation_targets_are_already_scored(setup):
    """Each window's objective reads exactly its focal range of targets just before its scored region
    (all of [ws, first scored) with focal = 0): targets that earlier windows scored."""
    model, stream, luts_t, plan = setup
    for cfg in (CAUSAL_CFGS["single"], CAUSAL_CFGS["armijo_focal0"]):
        runner = SlotRunner(model, stream, plan, luts_t, cfg, torch.device("cpu"))
        for b in range(0, plan.num_windows, BW):
            idx = range(b, min(b + BW, plan.num_windows))
            bt = runner._prepare(idx)
            for r, w in enumerate(idx):
                t = (int(bt.starts[r]) + bt.a + bt.opt_idx[r][bt.opt_mask[r]]).numpy()  # absolute target indices
                first = plan.scored_range(w)[0]
                lo = int(plan.starts[w]) if cfg.focal == 0 else max(int(plan.starts[w]), first - cfg.focal)
                assert np.array_equal(t, np.arange(lo, first)), (w, t)
                if w > 0:
                    assert plan.scored_range(w - 1)[1] == first  # [0, first) was scored by windows < w
                yo = bt.y_adapt[r].gather(0, bt.opt_idx[r])[bt.opt_mask[r]].numpy()
                assert np.array_equal(yo, stream[t + 1])


def test_delta_alone_equals_in_a_batch_of_32():
    """The batched L-BFGS gives a window the same delta alone as among 32 windows of one batch."""
    stream, luts_t = make_data(n=32 * S + T + 2)
    plan = sliding_plan(len(stream), T, S)
    cfg = SlotConfig(phase_iters=(5, 18), phase_history=(10, 20), phase_alpha=(0.0, 0.5), focal=FOCAL)
    runner = SlotRunner(make_model(), stream, plan, luts_t, cfg, torch.device("cpu"))
    batch = runner.score_batch(range(1, 33), None, ScoreAccumulator())  # windows 1-32 (window 0 has no data)
    assert batch.shape[0] == 32 and batch.abs().max() > 0.1
    for r in (0, 1, 8, 15, 16, 23, 30, 31):  # first, last, and rows around the middle of the batch
        w = r + 1
        alone = runner.score_batch(range(w, w + 1), None, ScoreAccumulator())
        torch.testing.assert_close(alone[0], batch[r], rtol=0, atol=1e-10)
