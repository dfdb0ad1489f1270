"""Window scoring against its slow twins: per-target prefix forwards (sliding), one forward per window (plain)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pgolf.data.tokenizer import build_byte_luts, load_tokenizer, luts_to_torch, target_bytes
from pgolf.runtime import DistEnv
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


def test_plain_equals_one_forward_per_window(setup):
    """plain_plan (training validation and `eval --mode plain`): every target once, the last partial window
    included, each window scored with its in-window context only; the batched, padded scorer equals a
    forward of each window alone (the NTK base of a padded batch is that of the full window length T, so
    the slow twin's partial window is padded the same way)."""
    stream, luts = setup
    m = _model(rope_ref_len=32)
    T = 64
    n = len(stream)  # 700 tokens: 10 whole windows and a partial one of 59 targets
    plan = plain_plan(n, T)
    nll = np.full(plan.n_targets, np.nan)
    s = score_windows(m, stream, plan, luts_to_torch(luts), DistEnv(), batch_windows=3, nll_out=nll)
    assert s.targets == n - 1 and plan.num_windows == -(-(n - 1) // T)
    ref = np.zeros(n - 1)
    with torch.no_grad():
        for ws in range(0, n - 1, T):
            x = torch.zeros(1, T, dtype=torch.long)
            k = min(T, n - 1 - ws)
            x[0, :k] = torch.as_tensor(stream[ws:ws + k])
            logp = F.log_softmax(m(x)[0, :k].double(), -1)
            ref[ws:ws + k] = -logp.gather(-1, torch.as_tensor(stream[ws + 1:ws + k + 1], dtype=torch.long)[:, None])[:, 0].numpy()
    np.testing.assert_allclose(nll, ref, rtol=0, atol=1e-9)
    assert s.bytes == int(target_bytes(luts, stream[:-1], stream[1:]).sum())


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
