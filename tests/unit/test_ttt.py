"""Score-first TTT: ledger audit, flip test (exact in float64), lr = 0 equals sliding, the caller's model
is untouched, the NON-COMPLIANT prequant reference fails both checks, world-size invariance."""

import numpy as np
import pytest
import torch

from pgolf.config import ScoreConfig, SlidingConfig, SlotConfig, TTTConfig
from pgolf.runtime import DistEnv
from pgolf.scoring.modes import PREQUANT_TTT, noncompliant
from pgolf.scoring.plan import sliding_plan
from pgolf.scoring.sliding import score_windows
from pgolf.scoring.ttt import audit_ledger, block_lr_mults, chunk_windows, score_ttt
from tests.helpers.dist import spawn_gloo
from tests.helpers.models import BW, FOCAL, S, T, flipped, make_data, make_model

CHUNK = 64
# flips: inside chunk 1's targets, at a chunk boundary (target 128 starts chunk 2), late in the stream
FLIPS = (100, 129, 200, 261)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup():
    stream, luts_t = make_data()
    return make_model(), stream, luts_t, sliding_plan(len(stream), T, S)


def score_cfg(**ttt):
    kw = dict(chunk_tokens=CHUNK, epochs=2, lr=0.02, batch_seqs=2)
    kw.update(ttt)
    return ScoreConfig(seq_len=T, sliding=SlidingConfig(stride=S, batch_windows=BW),
                       slot=SlotConfig(phase_iters=(3, 5), phase_history=(5, 5), phase_alpha=(0.0, 0.0), focal=FOCAL),
                       ttt=TTTConfig(**kw))


def run(model, stream, plan, luts_t, cfg, env=None, **kw):
    nll = np.full(plan.n_targets, np.nan)
    score, info = score_ttt(model, stream, plan, luts_t, env or DistEnv(), cfg, nll_out=nll, **kw)
    return score, info, nll


def test_chunks_and_lr_mults(setup):
    _, _, _, plan = setup
    bounds = chunk_windows(plan, CHUNK)
    first = plan.starts + plan.score_from
    assert bounds[0] == 0 and bounds[-1] == plan.num_windows and len(bounds) - 1 == -(-plan.n_targets // CHUNK)
    for c in range(len(bounds) - 1):
        w = np.arange(bounds[c], bounds[c + 1])
        assert ((first[w] // CHUNK) == c).all()
    assert block_lr_mults(11, 0.3)[0] == 0.3 and block_lr_mults(11, 0.3)[-1] == 1.0
    assert block_lr_mults(11, 0.3)[5] == pytest.approx(0.65)
    assert block_lr_mults(1, 0.3) == [1.0]


@pytest.mark.parametrize("opt", ["sgd", "adamw"])
def test_ledger_is_score_first_and_model_untouched(setup, opt):
    model, stream, luts_t, plan = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.requires_grad for p in model.parameters()]
    score, info, nll = run(model, stream, plan, luts_t, score_cfg(optimizer=opt, freeze_blocks=1))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert grads == [p.requires_grad for p in model.parameters()] and model.training is False
    assert info["compliant"] is True
    led = info["ledger"]
    assert audit_ledger(led, plan) == []
    assert info["updates"] == len(led["update_clock"]) > 0
    # explicit form of the check: each update's range ends at or before the first target scored after it
    lo_w = plan.starts + plan.score_from
    for clock, hi in zip(led["update_clock"], led["update_hi"]):
        later = led["window_scored_at"] > clock
        assert hi <= lo_w[later].min()
    assert (led["window_scored_at"] >= 0).all()
    assert np.count_nonzero(~np.isnan(nll)) == plan.n_targets == score.targets
    # no update after the last chunk's scoring
    assert led["update_clock"].max() < led["window_scored_at"].max()


@pytest.mark.parametrize("with_slot", [False, True])
def test_flip_leaves_earlier_targets_identical(setup, with_slot):
    model, stream, luts_t, plan = setup
    cfg = score_cfg()
    _, info, base = run(model, stream, plan, luts_t, cfg, with_slot=with_slot, warm_segments=2)
    assert info["mode"] == ("ttt+slot" if with_slot else "ttt") and info["compliant"] is True
    for m in FLIPS:
        _, _, nll = run(model, flipped(stream, m), plan, luts_t, cfg, with_slot=with_slot, warm_segments=2)
        assert np.array_equal(nll[:m - 1], base[:m - 1]), (m, np.abs(nll[:m - 1] - base[:m - 1]).max())
        assert nll[m - 1] != base[m - 1]
    # training did change later scores relative to no training
    _, _, frozen = run(model, stream, plan, luts_t, score_cfg(lr=0.0), with_slot=with_slot, warm_segments=2)
    assert np.array_equal(frozen[:CHUNK], base[:CHUNK])  # chunk 0 is scored before any update
    assert not np.allclose(frozen[2 * CHUNK:], base[2 * CHUNK:])


def test_prequant_reference_fails_audit_and_flip(setup):
    model, stream, luts_t, plan = setup
    cfg = score_cfg(mode="prequant")
    _, info, base = run(model, stream, plan, luts_t, cfg)
    assert info["compliant"] is False and info["label"] == noncompliant(PREQUANT_TTT)
    assert len(audit_ledger(info["ledger"], plan)) > 0
    m = 250
    _, _, nll = run(model, flipped(stream, m), plan, luts_t, cfg)
    assert not np.array_equal(nll[:m - 1], base[:m - 1])
    assert nll[0] != base[0]  # even the very first target moves


def test_lr_zero_equals_sliding(setup):
    model, stream, luts_t, plan = setup
    ref = np.full(plan.n_targets, np.nan)
    s0 = score_windows(model, stream, plan, luts_t, DistEnv(), batch_windows=BW, nll_out=ref)
    for opt in ("sgd", "adamw"):
        score, info, nll = run(model, stream, plan, luts_t, score_cfg(lr=0.0, optimizer=opt))
        assert info["updates"] > 0
        np.testing.assert_array_equal(nll, ref)
        assert score.targets == s0.targets and score.bytes == s0.bytes
        assert score.nats == pytest.approx(s0.nats, rel=1e-14)  # same per-target NLL, summed in other batches


def _rank_ttt(env, stream, luts_t, with_slot):
    torch.set_num_threads(1)
    model = make_model()
    plan = sliding_plan(len(stream), T, S)
    score, info, nll = run(model, stream, plan, luts_t, score_cfg(batch_seqs=3), env=env, with_slot=with_slot,
                           warm_segments=2)
    return score.nats, score.targets, score.bytes, nll, info["ledger"]["window_scored_at"], info["updates"]


@pytest.mark.dist
@pytest.mark.parametrize("with_slot", [False, True])
def test_two_ranks_equal_one_rank(with_slot):
    stream, luts_t = make_data()
    outs = spawn_gloo(2, _rank_ttt, stream, luts_t, with_slot, timeout=120)
    single = _rank_ttt(DistEnv(), stream, luts_t, with_slot)
    assert outs[0][1:3] == outs[1][1:3] == single[1:3]
    assert outs[0][0] == pytest.approx(single[0], rel=1e-9)
    assert np.array_equal(outs[0][4], single[4]) and outs[0][5] == single[5]
    both = np.where(np.isnan(outs[0][3]), outs[1][3], outs[0][3])
    assert not np.isnan(both).any()
    np.testing.assert_allclose(both, single[3], rtol=0, atol=1e-9)
