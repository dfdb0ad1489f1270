"""Causality of every evaluation mode through `evaluate()` (the path `pgolf eval` takes), STACK.md 8.5.

Flip test: replace the validation token at stream index m by another id and re-run the exact evaluator
(same batching, warm starts, chunks; CPU, float32, deterministic). Indexing: target t is the token
stream[t + 1], predicted from stream[0 .. t]. Changing stream[m] changes target m - 1 itself (it IS
that target) and every later target's context, so the targets that must not move are those with index
t < m - 1, i.e. nll[:m - 1]; they must be bitwise identical for plain, sliding, slot (single-phase and
cascaded), ttt and ttt+slot. The two NON-COMPLIANT reference modes (score.slot.coupling=shared,
score.ttt.mode=prequant) move some of them, and the last test shows it.
"""

import numpy as np
import pytest

from pgolf.presets import resolve
from pgolf.runtime import DistEnv
from pgolf.scoring.evaluate import EvalData, evaluate
from tests.helpers.models import CAUSALITY_SETS as SETS
from tests.helpers.models import flipped, make_data, perturbed_tiny_model

N = 208
# T = 48, S = 16, 4 windows per batch, 16-position focal range, TTT chunks of 64 targets, 2 warm-start
# segments. Flipped stream indices m (changed target m - 1): 97 -> target 96, the first scored target of
# batch 1 (windows 4-7) inside TTT chunk 1; 129 -> target 128, window 6's first scored target, which
# window 7 of the same batch adapts on, and the first target of chunk 2.
FLIPS = (97, 129)
SINGLE = ["score.slot.phase_iters=25", "score.slot.phase_history=20", "score.slot.phase_alpha=0"]
COMPLIANT_MODES = ("plain", "sliding", "slot", "ttt", "ttt+slot")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup():
    stream, luts_t = make_data(n=N)
    return perturbed_tiny_model().float(), stream, luts_t


def nlls(model, stream, luts_t, sets, modes):
    cfg, _ = resolve("tiny", SETS + sets, env={})
    out: dict = {}
    res = evaluate(model, cfg, DistEnv(), modes=modes, data=EvalData(stream, luts_t), nll_out=out, warm_segments=2)
    return res, out


def test_compliant_modes_never_look_ahead(setup):
    model, stream, luts_t = setup
    runs = {"": COMPLIANT_MODES, "single": ("slot",)}  # "" = cascaded SLOT (5 then 18 iterations)

    def all_modes(s):
        out = {}
        for tag, modes in runs.items():
            res, nll = nlls(model, s, luts_t, SINGLE if tag else [], modes)
            for m in modes:
                assert res[m]["compliant"] is True, (m, res[m]["label"])
                out[f"{m}:{tag}" if tag else m] = nll[m]
        return out

    base = all_modes(stream)
    assert len(base) == 6
    assert not np.array_equal(base["slot"], base["sliding"])  # SLOT does adapt
    assert not np.array_equal(base["slot"], base["slot:single"])
    assert not np.array_equal(base["ttt"], base["sliding"])  # TTT does train
    for m in FLIPS:
        new = all_modes(flipped(stream, m))
        for name, b in base.items():
            assert np.array_equal(new[name][:m - 1], b[:m - 1]), (name, m, np.abs(new[name][:m - 1] - b[:m - 1]).max())
            assert new[name][m - 1] != b[m - 1], (name, m)  # the flipped target itself does change


def test_reference_modes_leak(setup):
    model, stream, luts_t = setup
    sets = ["score.slot.coupling=shared", "score.ttt.mode=prequant"]
    res, base = nlls(model, stream, luts_t, sets, ("slot", "ttt"))
    for mode in ("slot", "ttt"):
        assert res[mode]["compliant"] is False and res[mode]["label"].startswith("NON-COMPLIANT")
    assert res["ttt"]["audit"]["ok"] is False and res["ttt"]["audit"]["n_problems"] > 0
    m = 129
    _, new = nlls(model, flipped(stream, m), luts_t, sets, ("slot", "ttt"))
    # shared delta: window 7 adapts on target 128, and the one delta of batch 1 (windows 4-7) scores
    # windows 4-6, i.e. targets 96-127: earlier than the flipped target
    changed = np.nonzero(new["slot"][:m - 1] != base["slot"][:m - 1])[0]
    assert len(changed) > 0 and changed.min() >= 96 and changed.max() < 128
    # prequant: the weights trained on every target first, so even target 0 moves
    assert new["ttt"][0] != base["ttt"][0]
    assert np.count_nonzero(new["ttt"][:m - 1] != base["ttt"][:m - 1]) > m // 2

