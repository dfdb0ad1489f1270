"""Every validation target is scored exactly once, in every mode, at any window length / stride and
world size; `sliding` with stride = seq_len equals `plain`.

Plan level (hypothesis, cheap): the windows each rank scores in each mode (contiguous shares for
plain/sliding/doc, whole warm-start segments for slot, per-chunk shares or segments for ttt / ttt+slot;
for lora the documents of each rank's batches) partition the plan's windows (documents), and the plan's
scored ranges tile the targets. Pipeline level: `evaluate()`
itself raises unless every target was written exactly once (see evaluate._gather_nll); these tests run
it at random shapes (world size 2 is tests/distributed/test_eval_dist.py).
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgolf.config import SCORE_MODES
from pgolf.data.tokenizer import ByteLUTs, target_bytes
from pgolf.presets import resolve
from pgolf.runtime import DistEnv, rank_share
from pgolf.scoring.evaluate import EvalData, evaluate, mode_plan, rank_window_count
from pgolf.scoring.lora import DocQueue
from pgolf.scoring.slot import rank_segments, segments
from pgolf.scoring.ttt import chunk_windows
from tests.helpers.models import make_data, perturbed_tiny_model


def rank_windows(mode, plan, cfg, env, warm_segments):
    """The window indices this rank scores in `mode`, by the scorers' own partition functions."""
    bw = cfg.score.sliding.batch_windows
    seg = mode in ("slot", "ttt+slot")

    def share(lo, hi):
        if seg:
            return [w for a, b in rank_segments(segments(lo, hi, bw, warm_segments), env) for w in range(a, b)]
        a, b = rank_share(lo, hi, env)
        return list(range(a, b))

    if mode in ("plain", "sliding", "doc"):
        lo, hi = plan.rank_windows(env)
        return list(range(lo, hi))
    if mode == "slot" or cfg.score.ttt.mode == "prequant":
        return share(0, plan.num_windows)
    bounds = chunk_windows(plan, cfg.score.ttt.chunk_tokens)
    return [w for a, b in zip(bounds[:-1], bounds[1:]) for w in share(int(a), int(b))]


def _cfg(T, S, bw, chunk, *sets):
    cfg, _ = resolve("tiny", [f"score.seq_len={T}", f"score.sliding.stride={S}", f"score.sliding.batch_windows={bw}",
                              f"score.ttt.chunk_tokens={chunk}", *sets], env={})
    return cfg


@settings(max_examples=100, deadline=None)
@given(n=st.integers(2, 1500), T=st.integers(2, 80), data=st.data())
def test_rank_windows_partition_and_targets_tile(n, T, data):
    S = data.draw(st.integers(1, T))
    ws = data.draw(st.integers(1, 9))
    ttt_mode = data.draw(st.sampled_from(["score_first", "prequant"]))
    per_batch = data.draw(st.integers(1, 5))
    cfg = _cfg(T, S, data.draw(st.integers(1, 9)), data.draw(st.integers(1, 400)), f"score.ttt.mode={ttt_mode}",
               f"score.lora.docs_per_batch={per_batch}", f"score.lora.chunk_tokens={min(T, 8)}",
               "score.lora.phase_docs=2,5")
    bos = data.draw(st.lists(st.integers(0, n - 1), max_size=12))  # documents start wherever a BOS is drawn
    stream = np.full(n, 7, dtype=np.int64)
    stream[bos] = cfg.model.bos_id
    for mode in SCORE_MODES:
        plan = mode_plan(mode, stream, cfg)
        if mode == "lora":  # ranks take whole batches of documents
            queue = DocQueue.build(stream, cfg.model.bos_id, (2, 5))
            for world in (1, 2, 3, 8):
                docs = []
                for r in range(world):
                    env = DistEnv(rank=r, world_size=world)
                    mine = [d for a, b in queue.segments for d in queue.rank_docs(a, b, env).tolist()]
                    assert len(mine) == rank_window_count(mode, plan, cfg, env, ws, stream)
                    docs += mine
                assert sorted(docs) == np.flatnonzero(queue.targets[:, 1] > queue.targets[:, 0]).tolist()
            continue
        lo = plan.starts + plan.score_from
        hi = plan.starts + plan.wlen
        assert lo[0] == 0 and hi[-1] == n - 1 and np.array_equal(lo[1:], hi[:-1]) and (hi > lo).all()
        for world in (1, 2, 3, 8):
            seen = []
            for r in range(world):
                env = DistEnv(rank=r, world_size=world)
                mine = rank_windows(mode, plan, cfg, env, ws)
                assert len(mine) == rank_window_count(mode, plan, cfg, env, ws)
                seen += mine
            assert sorted(seen) == list(range(plan.num_windows)), (mode, world)


@pytest.fixture(scope="module")
def model():
    return perturbed_tiny_model().float()


@pytest.mark.usefixtures("one_thread")
@settings(max_examples=6, deadline=None)
@given(n=st.integers(2, 120), T=st.integers(2, 40), data=st.data())
def test_evaluate_scores_every_target_once_in_every_mode(model, n, T, data):
    S = data.draw(st.integers(1, T))
    bw = data.draw(st.integers(1, 6))
    chunk = data.draw(st.integers(8, 64))
    stream, luts_t = make_data(n=n, seed=n)
    luts = ByteLUTs(*(v.numpy() for v in luts_t.values()))
    want_bytes = int(target_bytes(luts, stream[:-1], stream[1:]).sum())
    nll: dict = {}
    sets = ("score.ttt.batch_seqs=3", "score.slot.focal=8", f"score.lora.chunk_tokens={min(T, chunk)}",
            "score.lora.docs_per_batch=3", "score.lora.rank=2")
    res = evaluate(model, _cfg(T, S, bw, chunk, *sets), DistEnv(), modes=SCORE_MODES, data=EvalData(stream, luts_t),
                   nll_out=nll, warm_segments=data.draw(st.integers(1, 4)))
    for mode in SCORE_MODES:
        r = res[mode]
        assert r["targets"] == n - 1 and r["bytes"] == want_bytes, mode
        assert nll[mode].shape == (n - 1,) and np.isfinite(nll[mode]).all()
        assert r["nats"] == pytest.approx(nll[mode].sum(), rel=1e-12)


@pytest.mark.usefixtures("one_thread")
def test_sliding_with_stride_seq_len_equals_plain(model):
    stream, luts_t = make_data(n=203)
    T = 40
    nll: dict = {}
    res = evaluate(model, _cfg(T, T, 3, 64), DistEnv(), modes=("plain", "sliding"), data=EvalData(stream, luts_t),
                   nll_out=nll)
    assert np.array_equal(nll["plain"], nll["sliding"])
    assert res["plain"]["windows"] == res["sliding"]["windows"] == -(-202 // T)
    for k in ("nats", "targets", "bytes", "val_bpb"):
        assert res["plain"][k] == res["sliding"][k]
