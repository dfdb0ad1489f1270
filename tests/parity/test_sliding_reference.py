"""Sliding-window scoring against its slow twins: per-target prefix forwards, and plain scoring."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pgolf.data.tokenizer import build_byte_luts, load_tokenizer, luts_to_torch, target_bytes
from pgolf.runtime import DistEnv
from pgolf.scoring.plain import score_plain
from pgolf.scoring.plan import plain_plan, sliding_plan
from pgolf.scoring.sliding import score_windows
from tests.helpers.dist import spawn_gloo
from tests.helpers.models import perturbed_tiny_model


def _model(rope_ref_len=0):
    return perturbed_tiny_model(f"model.rope_ref_len={rope_ref_len}")


@pytest.fixture(scope="module")
def setup(tiny_data):
    sp = load_tokenizer(tiny_data["tokenizer"])
    luts = build_byte_luts(sp, 512)
    from pgolf.data.shards import load_val_tokens

    stream = np.asarray(load_val_tokens(tiny_data["dataset_dir"], 512)[:700])
    return stream, luts


def test_sliding_equals_per_target_prefix_forwards(setup):
    stream, luts = setup
    m = _model()
    T, S = 48, 16
    plan = sliding_plan(len(stream), T, S)
    nll = np.full(plan.n_targets, np.nan)
    score = score_windows(m, stream, plan, luts_to_torch(luts), DistEnv(), batch_windows=5, nll_out=nll)
    # slow twin: each target from its own forward over exactly the window prefix that precedes it
    ref = np.zeros(plan.n_targets)
    with torch.no_grad():
        for w in range(plan.num_windows):
            lo, hi = plan.scored_range(w)
            ws = int(plan.starts[w])
            for t in range(lo, hi):
                x = torch.as_tensor(stream[ws:t + 1], dtype=torch.long)[None]
                logp = F.log_softmax(m(x)[0, -1].double(), -1)
                ref[t] = -logp[int(stream[t + 1])].item()
    np.testing.assert_allclose(nll, ref, rtol=0, atol=1e-9)
    assert score.targets == plan.n_targets == len(stream) - 1
    assert score.bytes == int(target_bytes(luts, stream[:-1], stream[1:]).sum())
    assert score.loss == pytest.approx(ref.sum() / len(ref), rel=1e-12)
    assert score.bpb == pytest.approx(ref.sum() / (np.log(2) * score.bytes), rel=1e-12)


def test_stride_equal_seq_len_is_plain(setup):
    stream, luts = setup
    m = _model(rope_ref_len=32)
    T = 64
    n = (len(stream) - 1) // T * T + 1  # plain eval truncates to whole windows; use a stream that tiles
    s1 = score_windows(m, stream[:n], plain_plan(n, T), luts_to_torch(luts), DistEnv(), batch_windows=3)
    s2 = score_plain(m, stream[:n], T, luts_to_torch(luts), DistEnv(), batch_seqs=4)
    assert s1.targets == s2.targets and s1.bytes == s2.bytes
    assert s1.nats == pytest.approx(s2.nats, rel=1e-12)


def _rank_score(env, stream, luts_t):
    torch.set_num_threads(1)
    m = _model()
    s = score_windows(m, stream, sliding_plan(len(stream), 48, 16), luts_t, env, batch_windows=4)
    return s.nats, s.targets, s.bytes


@pytest.mark.dist
def test_two_ranks_sum_to_single_rank(setup):
    stream, luts = setup
    luts_t = luts_to_torch(luts)
    outs = spawn_gloo(2, _rank_score, stream, luts_t, timeout=120)
    single = _rank_score(DistEnv(), stream, luts_t)
    assert outs[0] == outs[1]
    assert outs[0][1:] == single[1:]
    assert outs[0][0] == pytest.approx(single[0], rel=1e-12)
