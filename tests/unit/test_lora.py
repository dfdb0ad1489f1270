"""Mode lora: per-document score-first LoRA TTT and phased global TTT. Flip tests (bitwise in float64) at
a document, chunk and batch boundary; a document's scores do not depend on the other documents; lr = 0 and
the first chunk equal the base model; step counts; the ledger audit; the update_first reference leaks and is
caught; phases train only on scored documents; 2 gloo ranks equal 1."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pgolf.config import LoraConfig, ScoreConfig, SlidingConfig
from pgolf.runtime import DistEnv
from pgolf.scoring.docs import doc_spans, doc_targets
from pgolf.scoring.lora import DocQueue, audit_lora_ledger, score_lora
from pgolf.scoring.modes import UPDATE_FIRST_LORA, noncompliant
from tests.helpers.dist import spawn_gloo
from tests.helpers.models import BOS, flipped, make_doc_data, perturbed_tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")
T, C = 48, 8
LENGTHS = (40, 7, 90, 3, 65, 30, 120, 12)


def cfg(**lora):
    kw = dict(rank=2, chunk_tokens=C, docs_per_batch=3, lr=0.05, context=32)
    kw.update(lora)
    return ScoreConfig(seq_len=T, sliding=SlidingConfig(stride=16, batch_windows=4), lora=LoraConfig(**kw))


def run(stream, luts_t, c, env=None, model=None):
    nll = np.full(len(stream) - 1, np.nan)
    s, info = score_lora(model or perturbed_tiny_model(), stream, luts_t, env or DistEnv(), c, nll_out=nll)
    return s, info, nll


@pytest.fixture(scope="module")
def data():
    return make_doc_data(LENGTHS)


def base_chunks(model, stream, ctx, chunk):
    """Slow twin with B = 0 adapters: each chunk scored from the base model's forward over its window."""
    tg = doc_targets(doc_spans(stream, BOS), len(stream))
    out = np.zeros(len(stream) - 1)
    with torch.no_grad():
        for lo, hi in tg:
            for a in range(lo, hi, chunk):
                e = min(a + chunk, hi)
                w0 = max(lo, a + chunk - ctx)
                x = torch.as_tensor(stream[w0:e])[None]
                logp = F.log_softmax(model(x, rope_len=ctx)[0].double(), -1)
                for t in range(a, e):
                    out[t] = -logp[t - w0, int(stream[t + 1])].item()
    return out


def test_lr_zero_is_the_base_model_chunked_and_counts_hold(data):
    stream, luts_t = data
    s, info, nll = run(stream, luts_t, cfg(lr=0.0))
    ref = base_chunks(perturbed_tiny_model(), stream, 32, C)
    np.testing.assert_allclose(nll, ref, rtol=0, atol=1e-9)
    assert s.targets == len(stream) - 1 and info["compliant"] and info["documents"] == len(LENGTHS)
    tg = doc_targets(doc_spans(stream, BOS), len(stream))
    steps = sum(-(-(hi - lo) // C) - 1 for lo, hi in tg)
    assert info["updates"] == steps  # a document's last chunk is never trained on
    assert audit_lora_ledger(info["ledger"], len(stream) - 1, tg) == []


def test_first_chunk_is_the_base_model_and_adaptation_changes_later_chunks(data):
    stream, luts_t = data
    _, info, nll = run(stream, luts_t, cfg())
    ref = base_chunks(perturbed_tiny_model(), stream, 32, C)
    tg = doc_targets(doc_spans(stream, BOS), len(stream))
    for lo, hi in tg:
        np.testing.assert_allclose(nll[lo:min(lo + C, hi)], ref[lo:min(lo + C, hi)], rtol=0, atol=1e-9)
    later = np.concatenate([np.arange(lo + C, hi) for lo, hi in tg])
    assert np.abs(nll[later] - ref[later]).max() > 1e-4  # the adapters do learn
    assert audit_lora_ledger(info["ledger"], len(stream) - 1, tg) == []


def boundaries(stream):
    tg = doc_targets(doc_spans(stream, BOS), len(stream))
    # the BOS of document 3, after document 2 (longer than the chunk window, its last chunk partial): the
    # flip merges the two documents, so the window of document 2's last chunk must not depend on where it ends
    doc_start = int(tg[3, 0])
    chunk_start = int(tg[2, 0]) + 2 * C + 1  # inside document 2, just after a chunk boundary
    waiting = int(tg[3, 0]) + 3  # inside document 3, the first to wait for a free slot (3 slots)
    return {"document": doc_start, "chunk": chunk_start, "batch": waiting}


@pytest.mark.parametrize("phases", [(), (3, 6)])
@pytest.mark.parametrize("where", ["document", "chunk", "batch"])
def test_flip_leaves_every_earlier_target_bitwise_unchanged(data, where, phases):
    stream, luts_t = data
    m = boundaries(stream)[where]
    c = cfg(phase_docs=phases, phase_lr=0.05)
    _, _, a = run(stream, luts_t, c)
    _, _, b = run(flipped(stream, m), luts_t, c)
    assert np.array_equal(a[:m - 1], b[:m - 1]), f"a target before {m} moved"
    assert not np.array_equal(a[m - 1:], b[m - 1:])


def test_update_first_reference_leaks_and_fails_the_ledger(data):
    stream, luts_t = data
    m = boundaries(stream)["chunk"] + C // 2  # mid-chunk: the chunk's earlier targets are scored after the update
    _, info, a = run(stream, luts_t, cfg(order="update_first"))
    _, _, b = run(flipped(stream, m), luts_t, cfg(order="update_first"))
    assert not np.array_equal(a[:m - 1], b[:m - 1])  # the update on a chunk saw the targets it then scored
    assert info["compliant"] is False and info["label"] == noncompliant(UPDATE_FIRST_LORA)
    tg = doc_targets(doc_spans(stream, BOS), len(stream))
    problems = audit_lora_ledger(info["ledger"], len(stream) - 1, tg)
    assert problems and "not all scored before it" in problems[0]


def test_flipping_a_bos_leaves_earlier_targets_unchanged(data):
    """Changing a document's BOS merges it into the previous document: nothing before it may move."""
    stream, luts_t = data
    m = int(doc_spans(stream, BOS)[4, 0])
    for phases in ((), (3,)):
        c = cfg(phase_docs=phases, phase_lr=0.05)
        _, _, a = run(stream, luts_t, c)
        s = stream.copy()
        s[m] = 9
        _, _, b = run(s, luts_t, c)
        assert np.array_equal(a[:m - 1], b[:m - 1])


def test_a_document_does_not_depend_on_the_others(data):
    """Reset: a document's NLLs are the same whatever the other documents hold and whatever batch it is in."""
    stream, luts_t = data
    spans = doc_spans(stream, BOS)
    _, _, full = run(stream, luts_t, cfg())
    lo, hi = (int(v) for v in spans[2])
    other = stream.copy()
    for d in (0, 4, 6):  # change other documents (same lengths, so the same queue), never into a BOS
        s, e = int(spans[d, 0]) + 1, int(spans[d, 1])
        other[s:e] = (other[s:e] + 5) % 500 + 2
    _, _, changed = run(other, luts_t, cfg())
    np.testing.assert_allclose(changed[lo:hi - 1], full[lo:hi - 1], rtol=0, atol=1e-12)
    for per_batch in (1, 2, 8):  # other batch compositions
        _, _, regrouped = run(stream, luts_t, cfg(docs_per_batch=per_batch))
        np.testing.assert_allclose(regrouped[lo:hi], full[lo:hi], rtol=0, atol=1e-12)


def test_phases_train_only_on_scored_documents_and_lr_zero_changes_nothing(data):
    stream, luts_t = data
    tg = doc_targets(doc_spans(stream, BOS), len(stream))
    _, plain_info, plain = run(stream, luts_t, cfg())
    _, info0, zero = run(stream, luts_t, cfg(phase_docs=(3,), phase_lr=0.0))
    np.testing.assert_allclose(zero, plain, rtol=0, atol=1e-12)
    _, info, phased = run(stream, luts_t, cfg(phase_docs=(3, 6), phase_lr=0.05))
    assert [p["after_docs"] for p in info["phases"]] == [3, 6]
    assert audit_lora_ledger(info["ledger"], len(stream) - 1, tg) == []
    first = DocQueue.build(stream, BOS).docs[:3]
    for d in first:  # scored before the first phase: unchanged by it
        lo, hi = tg[d]
        np.testing.assert_allclose(phased[lo:hi], plain[lo:hi], rtol=0, atol=1e-12)
    assert not np.allclose(phased, plain)
    g = info["ledger"]["global"]
    assert set(g[g[:, 0] == g[:, 0].min(), 1].tolist()) == set(first.tolist())


def _rank_lora(env, stream, luts_t, phase):
    torch.set_num_threads(1)
    c = cfg(phase_docs=(3,), phase_lr=0.05) if phase else cfg()
    s, info, nll = run(stream, luts_t, c, env=env)
    return s.nats, s.targets, s.bytes, nll


@pytest.mark.dist
@pytest.mark.parametrize("phase", [False, True])
def test_two_ranks_equal_one_rank(data, phase):
    stream, luts_t = data
    outs = spawn_gloo(2, _rank_lora, stream, luts_t, phase, timeout=180)
    single = _rank_lora(DistEnv(), stream, luts_t, phase)
    for o in outs:
        assert o[1:3] == single[1:3]
        assert o[0] == pytest.approx(single[0], rel=1e-12)
        written = ~np.isnan(o[3])
        np.testing.assert_allclose(o[3][written], single[3][written], rtol=0, atol=1e-10)


def _rank_flip(env, stream, luts_t, m):
    torch.set_num_threads(1)
    c = cfg(phase_docs=(3,), phase_lr=0.05)
    _, _, a = run(stream, luts_t, c, env=env)
    _, _, b = run(flipped(stream, m), luts_t, c, env=env)
    return a, b


@pytest.mark.dist
@pytest.mark.parametrize("where", ["document", "batch"])
def test_flip_at_two_ranks(data, where):
    """The flip test with the work split over 2 gloo ranks (and a global phase): each rank's share of the
    earlier targets is bitwise unchanged."""
    stream, luts_t = data
    m = boundaries(stream)[where]
    (a0, b0), (a1, b1) = spawn_gloo(2, _rank_flip, stream, luts_t, m, timeout=180)
    mine0, mine1 = ~np.isnan(a0[:m - 1]), ~np.isnan(a1[:m - 1])
    assert not (mine0 & mine1).any() and (mine0 | mine1).all()  # the ranks share the earlier targets out
    for a, b, mine in ((a0, b0, mine0), (a1, b1, mine1)):
        assert np.array_equal(np.isnan(b[:m - 1]), ~mine)
        assert np.array_equal(a[:m - 1][mine], b[:m - 1][mine])
