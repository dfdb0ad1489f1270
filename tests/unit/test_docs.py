"""Documents: spans and the `doc` plan, document-isolated attention (mask, slow twin, kernels, KV cache),
the BOS smear fix, and the doc mode's scores against one forward per document window."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pgolf.model.attention import DocSegments, sdpa_attention
from pgolf.model.gpt import GPT
from pgolf.model.kernels import _flex, select_attention
from pgolf.presets import resolve
from pgolf.runtime import DistEnv
from pgolf.scoring.docs import doc_plan, doc_spans, doc_targets
from pgolf.scoring.evaluate import EvalData, evaluate
from tests.helpers.models import BOS, make_doc_data

pytestmark = pytest.mark.usefixtures("one_thread")
T, S = 48, 16


def iso_model(iso=True, seed=0, dtype=torch.float64):
    cfg, _ = resolve("tiny", [f"model.doc_isolation={iso}"], env={})
    torch.manual_seed(seed)
    m = GPT(cfg.model).to(dtype).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def test_spans_targets_and_plan_tile_the_stream():
    for lead in (0, 5):
        stream, _ = make_doc_data(lead=lead)
        n = len(stream)
        spans = doc_spans(stream, BOS)
        assert spans[0, 0] == 0 and spans[-1, 1] == n and (spans[1:, 0] == spans[:-1, 1]).all()
        assert all(stream[s] == BOS for s, _ in spans[1 if lead else 0:])
        tg = doc_targets(spans, n)
        assert tg[0, 0] == 0 and tg[-1, 1] == n - 1 and (tg[1:, 0] == tg[:-1, 1]).all()
        plan = doc_plan(stream, T, S, BOS)
        covered = np.zeros(n - 1, dtype=int)
        for w in range(plan.num_windows):
            lo, hi = plan.scored_range(w)
            covered[lo:hi] += 1
            ws, we = int(plan.starts[w]), int(plan.starts[w] + plan.wlen[w])
            d = np.searchsorted(spans[:, 0], ws, side="right") - 1
            assert ws >= spans[d, 0] and we <= spans[d, 1], "a window's inputs stay inside one document"
        assert (covered == 1).all() and plan.n_targets == n - 1
        firsts = plan.starts[plan.score_from == 0]
        assert set(firsts.tolist()) == set(tg[tg[:, 1] > tg[:, 0], 0].tolist())  # every document's first window


def attention_reference(q, k, v, ids):
    """float64 loop: softmax over keys s <= t with ids[s] == ids[t]."""
    b, t, h, dh = q.shape
    g = h // k.size(2)
    out = torch.zeros(b, t, h, dh, dtype=torch.float64)
    for i in range(b):
        for hh in range(h):
            for tt in range(t):
                keys = [s for s in range(tt + 1) if ids[i, s] == ids[i, tt]]
                sc = torch.stack([q[i, tt, hh].double() @ k[i, s, hh // g].double() for s in keys]) / dh ** 0.5
                w = torch.softmax(sc, 0)
                out[i, tt, hh] = sum(w[j] * v[i, s, hh // g].double() for j, s in enumerate(keys))
    return out


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_document_mask_equals_the_loop_reference_and_the_flex_kernel():
    torch.manual_seed(0)
    idx = torch.tensor([[5, 7, BOS, 9, 9, BOS, 4, 2, 8], [BOS, 3, 3, 3, BOS, BOS, 6, 6, 6]])
    seg = DocSegments.of(idx, BOS)
    assert seg.ids.tolist() == [[0, 0, 1, 1, 1, 2, 2, 2, 2], [1, 1, 1, 1, 2, 3, 3, 3, 3]]
    q, k, v = torch.randn(2, 9, 4, 8, dtype=torch.float64), torch.randn(2, 9, 2, 8, dtype=torch.float64), \
        torch.randn(2, 9, 2, 8, dtype=torch.float64)
    ref = attention_reference(q, k, v, seg.ids)
    torch.testing.assert_close(sdpa_attention(q, k, v, seg), ref, rtol=0, atol=1e-12)
    no_bos = DocSegments.of(torch.full((2, 9), 7), BOS)  # one segment per row: plain causal attention
    torch.testing.assert_close(sdpa_attention(q, k, v, no_bos), sdpa_attention(q, k, v), rtol=0, atol=1e-12)
    flex = _flex()
    if flex is not None:  # the CUDA fast path, run here eagerly on CPU for its math
        try:
            got = flex(q.float(), k.float(), v.float(), DocSegments.of(idx, BOS))
        except (RuntimeError, NotImplementedError) as e:  # an eager CPU flex may be unsupported: say so
            pytest.skip(f"FlexAttention does not run eagerly on this CPU build: {e}")
        torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-5)
    assert select_attention("auto", torch.device("cpu"), True)[1] == "sdpa-doc-mask"
    with pytest.raises(ValueError, match="no document mask"):
        select_attention("fa3", torch.device("cpu"), True)


def test_no_information_crosses_a_bos():
    """Pack [A, B]: changing any token of A changes no logit of B (the prediction made at B's BOS
    included), and B's logits equal B run alone; the smear/bigram input at a BOS is the plain BOS embedding."""
    m = iso_model()
    a = torch.tensor([BOS, 11, 12, 13, 14, 15])
    b = torch.tensor([BOS, 21, 22, 23, 24])
    packed = torch.cat([a, b])[None]
    with torch.no_grad():
        base = m(packed)[0, len(a):]
        alone = m(b[None])[0]
        torch.testing.assert_close(base, alone, rtol=0, atol=1e-10)
        for j in range(1, len(a)):
            p2 = packed.clone()
            p2[0, j] = 99
            assert torch.equal(m(p2)[0, len(a):], base)
        x0 = m.embed(packed)
        torch.testing.assert_close(x0[0, len(a)], m.embed(b[None])[0, 0], rtol=0, atol=1e-12)
        # without isolation the previous document leaks into B (the probe is not vacuous)
        leak = iso_model(iso=False)
        assert not torch.allclose(leak(packed)[0, len(a):], leak(b[None])[0])


def test_offset_invariance_and_kv_cache_with_isolation():
    m = iso_model()
    doc = torch.tensor([BOS, 31, 32, 33, 34, 35, 36])
    filler = torch.tensor([BOS] + [40] * 20)
    with torch.no_grad():
        alone = m(doc[None])[0]
        late = m(torch.cat([filler, doc])[None])[0, len(filler):]
        torch.testing.assert_close(late, alone, rtol=0, atol=1e-9)  # rotary depends only on offsets
        idx = torch.cat([filler[:5], doc])[None]
        full = m.forward_hidden(idx, rope_len=32)
        cache = m.new_kv_cache(32)
        steps = [m.decode_hidden(idx[:, :p], cache) for p in (3, 6, 9, idx.size(1))]
        torch.testing.assert_close(torch.cat(steps, 1), full, rtol=0, atol=1e-10)


@pytest.mark.parametrize("iso", [False, True])
def test_doc_mode_equals_one_forward_per_document_window(iso):
    stream, luts_t = make_doc_data()
    m = iso_model(iso)
    cfg, _ = resolve("tiny", [f"score.seq_len={T}", f"score.sliding.stride={S}", f"model.doc_isolation={iso}"],
                     env={})
    nll = {}
    res = evaluate(m, cfg, DistEnv(), modes=("doc",), data=EvalData(stream, luts_t), nll_out=nll)["doc"]
    assert res["targets"] == len(stream) - 1 and res["compliant"] and res["label"] == "compliant"
    plan = doc_plan(stream, T, S, BOS)
    ref = np.zeros(len(stream) - 1)
    with torch.no_grad():
        for w in range(plan.num_windows):
            ws, n = int(plan.starts[w]), int(plan.wlen[w])
            x = torch.as_tensor(stream[ws:ws + n])[None]
            logp = F.log_softmax(m(x, rope_len=T)[0].double(), -1)
            for j in range(int(plan.score_from[w]), n):
                ref[ws + j] = -logp[j, int(stream[ws + j + 1])].item()
    np.testing.assert_allclose(nll["doc"], ref, rtol=0, atol=1e-9)
