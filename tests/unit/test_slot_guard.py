"""The SLOT guard and L2 penalty (docs/DESIGN.md#eval-slot): never_keep is sliding bitwise, the flip test with
the guard and the penalty, the guard's decision ignores the window's own scored targets, l2 limits, the kept
fraction, the named seed setting. CPU, float64, one thread."""

import dataclasses

import numpy as np
import pytest
import torch

from pgolf.config import ConfigError, SlotConfig
from pgolf.config.score import slot_setting, slot_setting_sets
from pgolf.presets import resolve
from pgolf.runtime import DistEnv
from pgolf.scoring.bpb import ScoreAccumulator
from pgolf.scoring.evaluate import EvalData, evaluate
from pgolf.scoring.plan import sliding_plan
from pgolf.scoring.sliding import score_windows
from pgolf.scoring.slot import SlotRunner, score_slot
from tests.helpers.models import BW, CAUSALITY_SETS, FLIPS, FOCAL, S, T, flipped, make_data, make_doc_data, make_model

pytestmark = pytest.mark.usefixtures("one_thread")

CASCADE = dict(phase_iters=(5, 18), phase_history=(10, 20), phase_alpha=(0.0, 0.0), focal=FOCAL)
LIGHT = dict(phase_iters=(3, 5), phase_history=(5, 5), phase_alpha=(0.0, 0.5), focal=FOCAL)
# the guard's mechanism tests: a plain check (a quarter of the positions, no confidence bound) on the
# unpenalized fit, so that many windows are kept and many are not
CHECK = dict(guard="check", guard_frac=0.25, guard_z=0.0, l2=0.0)


@pytest.fixture(scope="module")
def setup():
    stream, luts_t = make_data()
    return make_model(), stream, luts_t, sliding_plan(len(stream), T, S)


def run(model, stream, plan, luts_t, cfg, **kw):
    nll = np.full(plan.n_targets, np.nan)
    score, info = score_slot(model, stream, plan, luts_t, DistEnv(), cfg, batch_windows=BW, nll_out=nll,
                             warm_segments=2, **kw)
    return score, info, nll


def sliding_nll(model, stream, plan, luts_t):
    ref = np.full(plan.n_targets, np.nan)
    score = score_windows(model, stream, plan, luts_t, DistEnv(), batch_windows=BW, nll_out=ref)
    return score, ref


@pytest.mark.parametrize("space", ["logit", "hidden"])
def test_never_keep_is_sliding_bitwise(setup, space):
    model, stream, luts_t, plan = setup
    s0, ref = sliding_nll(model, stream, plan, luts_t)
    for extra in ({}, {"l2": 0.5, "guard_refit": True}):
        cfg = SlotConfig(**CASCADE, space=space, guard="never_keep", **extra)
        score, info, nll = run(model, stream, plan, luts_t, cfg)
        assert np.array_equal(nll, ref)
        assert (score.targets, score.bytes) == (s0.targets, s0.bytes)
        assert info["windows_kept"] == 0 and info["kept_fraction"] == 0.0
        assert info["windows_checked"] > 0  # the fit and the check did run


FLIP_CFGS = {
    "guard_logit": SlotConfig(**CASCADE, **CHECK),
    "guard_hidden": SlotConfig(**LIGHT, space="hidden", **CHECK),
    "l2_logit": SlotConfig(**CASCADE, guard="off", l2=0.05),
    "l2_hidden_guard": SlotConfig(**LIGHT, space="hidden", guard="check", guard_z=0.0, l2=0.05),
    "refit_shrink_l2": SlotConfig(**LIGHT, guard="check", guard_z=0.0, l2=0.01, guard_refit=True,
                                  guard_shrink=(1.0, 0.3), guard_frac=0.5),
    "guard_z": SlotConfig(**CASCADE, guard="check", l2=0.0, guard_z=1.0, guard_frac=0.5),
    "default": SlotConfig(**CASCADE),
    "guarded_default": SlotConfig(**CASCADE, guard="check", guard_z=0.5),
}


@pytest.mark.parametrize("name", list(FLIP_CFGS))
def test_flip_leaves_earlier_targets_identical(setup, name):
    model, stream, luts_t, plan = setup
    cfg = FLIP_CFGS[name]
    _, info, base = run(model, stream, plan, luts_t, cfg)
    assert info["compliant"] is True
    assert 0 < info["windows_kept"]  # some window is scored with a fitted delta: the probe is not vacuous
    _, ref = sliding_nll(model, stream, plan, luts_t)
    assert not np.array_equal(base, ref)
    for m in FLIPS:
        _, _, nll = run(model, flipped(stream, m), plan, luts_t, cfg)
        assert np.array_equal(nll[:m - 1], base[:m - 1]), (name, m, np.abs(nll[:m - 1] - base[:m - 1]).max())
        assert nll[m - 1] != base[m - 1]


def _chain(runner, stop):
    """Batches 0, 1, ... with the warm start chained (as score_segment does) up to the batch holding window
    `stop`; -> {window: (kept, delta)} and the accumulated NLL array."""
    out, warm = {}, None
    for b in range(0, stop + 1, BW):
        idx = range(b, min(b + BW, runner.plan.num_windows))
        final = runner.score_batch(idx, warm, ScoreAccumulator())
        warm = final.mean(0)
        for r, w in enumerate(idx):
            out[w] = (bool(runner.last_kept[r]), final[r].clone())
    return out


@pytest.mark.parametrize("space", ["logit", "hidden"])
def test_guard_decision_ignores_the_windows_own_scored_targets(setup, space):
    """Changing every target window w scores leaves its keep decision and its delta bitwise unchanged (the
    guard reads only the window's adaptation targets, which earlier windows scored)."""
    model, stream, luts_t, plan = setup
    cfg = SlotConfig(**(CASCADE if space == "logit" else LIGHT), **CHECK, space=space, guard_refit=True)
    rng = np.random.default_rng(1)
    dev = torch.device("cpu")
    seen = set()
    for w in (5, 6, 9, 13):
        first, last = plan.scored_range(w)
        other = stream.copy()
        other[first + 1:last + 1] = rng.integers(0, 512, last - first)  # target t is the token stream[t + 1]
        n_a, n_b = np.full(plan.n_targets, np.nan), np.full(plan.n_targets, np.nan)
        a = _chain(SlotRunner(model, stream, plan, luts_t, cfg, dev, nll_out=n_a), w)
        b = _chain(SlotRunner(model, other, plan, luts_t, cfg, dev, nll_out=n_b), w)
        assert a[w][0] == b[w][0], w
        assert torch.equal(a[w][1], b[w][1]), w
        assert not np.array_equal(n_a[first:last], n_b[first:last])  # what w scores did change
        seen.add(a[w][0])
    assert True in seen  # a kept window among those probed (its delta is then the fitted one)


def test_guard_decision_reads_the_check_positions(setup):
    """The power side of the test above: the same change applied to the windows' check positions (their
    latest adaptation targets) does move decisions."""
    model, stream, luts_t, plan = setup
    cfg = SlotConfig(**CASCADE, **CHECK)
    dev = torch.device("cpu")
    rng = np.random.default_rng(2)
    other = stream.copy()
    for w in range(4, plan.num_windows):
        first = plan.scored_range(w)[0]
        c = max(1, int(FOCAL * cfg.guard_frac))
        other[first - c + 1:first + 1] = rng.integers(0, 512, c)
    a = _chain(SlotRunner(model, stream, plan, luts_t, cfg, dev), plan.num_windows - 1)
    b = _chain(SlotRunner(model, other, plan, luts_t, cfg, dev), plan.num_windows - 1)
    assert any(a[w][0] != b[w][0] for w in a)


@pytest.mark.parametrize("space", ["logit", "hidden"])
def test_l2_limits(setup, space):
    model, stream, luts_t, plan = setup
    _, ref = sliding_nll(model, stream, plan, luts_t)
    base = SlotConfig(**LIGHT, space=space, guard="off", l2=0.0)
    _, _, n0 = run(model, stream, plan, luts_t, base)
    # the penalty path with a penalty far below every gradient's ulp is the unpenalized fit bitwise
    _, _, tiny = run(model, stream, plan, luts_t, dataclasses.replace(base, l2=1e-300))
    assert np.array_equal(tiny, n0)
    _, _, big = run(model, stream, plan, luts_t, dataclasses.replace(base, l2=1e6))
    assert np.abs(big - ref).max() < 1e-4 < np.abs(n0 - ref).max()
    # the named seed setting on this geometry is the guard-off, unpenalized fit
    seed = slot_setting("seed", dataclasses.replace(base, guard="check", l2=3.0, clamp=0.5))
    assert (seed.clamp, seed.l2, seed.guard, seed.focal, seed.within_doc) == (5.0, 0.0, "off", 128, False)
    want = run(model, stream, plan, luts_t, dataclasses.replace(base, focal=128))[2]
    assert np.array_equal(run(model, stream, plan, luts_t, seed)[2], want)


@pytest.mark.parametrize("space", ["logit", "hidden"])
def test_penalized_fit_is_stationary(setup, space):
    """With l2 > 0 the fitted delta solves grad(mean NLL) + l2 * delta = 0 (the penalty is inside the
    L-BFGS objective, analytic gradient in logit space, autograd in hidden space)."""
    model, stream, luts_t, plan = setup
    l2 = 0.5
    cfg = SlotConfig(phase_iters=(60,), phase_history=(20,), phase_alpha=(0.0,), focal=FOCAL, space=space, l2=l2,
                     guard="off", clamp=100.0)
    runner = SlotRunner(model, stream, plan, luts_t, cfg, torch.device("cpu"))
    idx = range(4, 8)
    delta = runner.score_batch(idx, None, ScoreAccumulator())
    bt = runner._prepare(idx)
    K = delta.size(1)
    bo = bt.base.gather(1, bt.opt_idx[..., None].expand(-1, -1, K))
    yo = bt.y.gather(1, bt.opt_idx)
    d = delta.clone().requires_grad_(True)
    m = bt.opt_mask.double()
    z = runner._logits(bo, d)
    nll = torch.logsumexp(z, -1) - z.gather(-1, yo[..., None])[..., 0]
    (g_nll,) = torch.autograd.grad(((nll * m).sum(-1) / m.sum(-1)).sum(), d)
    g = g_nll + l2 * delta  # the gradient of the penalized objective
    assert delta.abs().max() > 1e-2 and g_nll.abs().max() > 1e-2  # the plain NLL is far from stationary here
    assert g.abs().max() < 1e-5, g.abs().max()


def test_kept_fraction_reported_and_moves(setup):
    model, stream, luts_t, plan = setup
    frac = {}
    for name, extra in {"off": {"guard": "off"}, "check": CHECK, "margin": {**CHECK, "guard_margin": 100.0},
                        "never": {"guard": "never_keep"}}.items():
        _, info, _ = run(model, stream, plan, luts_t, SlotConfig(**CASCADE, **extra))
        assert 0.0 <= info["kept_fraction"] <= 1.0
        assert info["kept_fraction"] == info["windows_kept"] / info["windows_adapted"]
        assert sum(info["guard_kept_per_shrink"]) == (0 if name == "off" else info["windows_kept"])
        frac[name] = info["kept_fraction"]
    assert frac["off"] == 1.0 and frac["margin"] == 0.0 and frac["never"] == 0.0
    assert 0.0 < frac["check"] <= 1.0


def test_results_record_the_kept_fraction():
    stream, luts_t = make_data(n=208)
    cfg, _ = resolve("tiny", [*CAUSALITY_SETS, "score.slot.guard=check"], env={})
    res = evaluate(make_model(), cfg, DistEnv(), modes=("slot",), data=EvalData(stream, luts_t), warm_segments=2)
    slot = res["slot"]["slot"]
    assert 0.0 <= slot["kept_fraction"] <= 1.0 and slot["guard"] == "check"
    assert res["slot"]["settings"]["slot"]["guard"] == "check"


def test_config_values_and_the_seed_setting():
    tiny, _ = resolve("tiny", [], env={})
    cfg, _ = resolve("tiny", slot_setting_sets("seed"), env={})
    assert cfg.score.slot == slot_setting("seed", tiny.score.slot)
    cfg, _ = resolve("tiny", ["score.slot.guard=off", "score.slot.guard_shrink=1,0.5", "score.slot.l2=0.1"], env={})
    assert cfg.score.slot.guard == "off" and cfg.score.slot.guard_shrink == (1.0, 0.5) and cfg.score.slot.l2 == 0.1
    for sets, key in ((["score.slot.guard_frac=1"], "score.slot.guard_frac"),
                      (["score.slot.guard_shrink=0"], "score.slot.guard_shrink"),
                      (["score.slot.l2=-1"], "score.slot.l2"),
                      (["score.slot.guard_margin=-0.1"], "score.slot.guard_margin"),
                      (["score.slot.guard_z=-1"], "score.slot.guard_z"),
                      (["score.slot.guard_z=nan"], "score.slot.guard_z"),
                      (["score.slot.guard=maybe"], "score.slot.guard")):
        with pytest.raises(ConfigError) as e:
            resolve("tiny", sets, env={})
        assert str(e.value).startswith(key) and "\n" not in str(e.value)
    with pytest.raises(ConfigError):
        slot_setting("nope")


def test_guard_z_matches_a_float64_loop(setup):
    """_confident (vectorized) against a per-window, per-position float64 loop of its rule."""
    model, stream, luts_t, plan = setup
    g = torch.Generator().manual_seed(3)
    B, Po, V = 5, 7, 11
    bo = torch.randn(B, Po, V, generator=g, dtype=torch.float64)
    yo = torch.randint(0, V, (B, Po), generator=g)
    delta = 0.7 * torch.randn(B, V, generator=g, dtype=torch.float64)
    counts = [0, 1, 2, 4, 7]  # check positions per row: rows with c < 2 are never confident
    mask = torch.arange(Po)[None, :] < torch.tensor(counts)[:, None]
    for z, margin in ((0.0, 0.0), (0.5, 0.0), (1.0, 0.01), (3.0, 0.0)):
        runner = SlotRunner(model, stream, plan, luts_t, SlotConfig(**CASCADE, guard_z=z, guard_margin=margin),
                            torch.device("cpu"))
        got = runner._confident(runner._pos_nll(bo, yo, delta) - runner._pos_nll(bo, yo, torch.zeros_like(delta)), mask)
        for r, c in enumerate(counts):
            d = []
            for j in range(c):
                lp1 = torch.log_softmax(bo[r, j] + delta[r], -1)[yo[r, j]].item()
                lp0 = torch.log_softmax(bo[r, j], -1)[yo[r, j]].item()
                d.append(lp0 - lp1)  # nll(delta) - nll(0)
            if c < 2:
                want = False
            else:
                mean = sum(d) / c
                sd = (sum((x - mean) ** 2 for x in d) / (c - 1)) ** 0.5
                want = mean + z * sd / c ** 0.5 < -margin
            assert bool(got[r]) == want, (z, r)


def test_guard_z_huge_is_sliding_and_z_keeps_fewer(setup):
    model, stream, luts_t, plan = setup
    s0, ref = sliding_nll(model, stream, plan, luts_t)
    kept = {}
    for z in (0.0, 0.5, 1e9):
        score, info, nll = run(model, stream, plan, luts_t,
                               SlotConfig(**CASCADE, guard="check", l2=0.0, guard_z=z, guard_frac=0.5))
        kept[z] = info["windows_kept"]
        assert info["guard_z"] == z
        if z == 1e9:
            assert info["windows_kept"] == 0 and np.array_equal(nll, ref)
    assert kept[0.0] >= kept[0.5] >= kept[1e9] == 0 and kept[0.0] > 0


def test_within_doc_scores_later_documents_as_sliding_and_stays_causal():
    """within_doc: a scored target of a later document than the window's first scored target gets delta 0
    (sliding's NLL bitwise); other targets adapt; the flip test holds."""
    stream, luts_t = make_doc_data(lengths=(150, 40, 200, 90, 120, 60))
    model = make_model()
    plan = sliding_plan(len(stream), T, S)
    cfg = SlotConfig(**CASCADE, within_doc=True)
    _, info, nll = run(model, stream, plan, luts_t, cfg)
    _, ref = sliding_nll(model, stream, plan, luts_t)
    doc = np.cumsum(stream == model.cfg.bos_id)  # document of the target at t = that of input t
    later = np.zeros(plan.n_targets, bool)
    for w in range(plan.num_windows):
        first, last = plan.scored_range(w)
        later[first:last] = doc[first:last] != doc[first]
    assert later.any() and (~later).any()
    assert np.array_equal(nll[later], ref[later])
    assert not np.array_equal(nll[~later], ref[~later])
    assert info["within_doc"] is True
    for f in (60, 230, 400):  # the flip test: targets before f do not move
        _, _, moved = run(model, flipped(stream, f), plan, luts_t, cfg)
        assert np.array_equal(moved[:f - 1], nll[:f - 1])  # stream[f] is target f - 1
