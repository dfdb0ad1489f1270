"""`evaluate()` on 2 gloo ranks equals world size 1, for every mode: the same per-target NLL (gathered in
stream order, each target from exactly one rank: evaluate raises otherwise), counts, bytes and sums."""

import numpy as np
import pytest
import torch

from pgolf.config import SCORE_MODES
from pgolf.presets import resolve
from pgolf.runtime import DistEnv
from pgolf.scoring.evaluate import EvalData, evaluate
from tests.helpers.dist import spawn_gloo
from tests.helpers.models import make_data, perturbed_tiny_model

SETS = ["score.seq_len=48", "score.sliding.stride=16", "score.sliding.batch_windows=4", "score.slot.focal=16",
        "score.slot.phase_iters=3,5", "score.slot.phase_history=5,5", "score.ttt.chunk_tokens=64",
        "score.ttt.epochs=2", "score.ttt.lr=0.02", "score.ttt.batch_seqs=3", "score.lora.chunk_tokens=16",
        "score.lora.docs_per_batch=3", "score.lora.rank=2", "score.lora.phase_docs=4"]


def _rank_eval(env, stream, luts_t, warm_segments):
    torch.set_num_threads(1)
    cfg, _ = resolve("tiny", SETS, env={})
    nll: dict = {}
    res = evaluate(perturbed_tiny_model(), cfg, env, modes=SCORE_MODES, data=EvalData(stream, luts_t), nll_out=nll,
                   warm_segments=warm_segments)  # float64 model: TTT's all-reduced updates agree to ~1e-15
    return {m: (r["nats"], r["targets"], r["bytes"], r["windows"], r["compliant"]) for m, r in res.items()}, nll


@pytest.mark.dist
def test_two_ranks_equal_one_rank_every_mode():
    stream, luts_t = make_data(n=260)
    outs = spawn_gloo(2, _rank_eval, stream, luts_t, 3, timeout=120)
    single, nll1 = _rank_eval(DistEnv(), stream, luts_t, 3)
    for mode in SCORE_MODES:
        r0, r1 = outs[0][0][mode], outs[1][0][mode]
        assert r0 == r1  # every rank reports the same all-reduced result
        assert r0[1:] == single[mode][1:] and r0[1] == len(stream) - 1
        assert r0[0] == pytest.approx(single[mode][0], rel=1e-12)
        assert np.array_equal(outs[0][1][mode], outs[1][1][mode])  # the gathered NLL, on both ranks
        np.testing.assert_allclose(outs[0][1][mode], nll1[mode], rtol=0, atol=1e-12, err_msg=mode)
