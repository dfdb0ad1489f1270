"""The KV-cached decoder (fast path of self-generated calibration) against the full re-forward (its slow
twin): `GPT.decode_hidden` == `forward_hidden(idx, rope_len=max_len)` position by position, and the
cached sampler draws the same tokens as the uncached one."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from pgolf.model.gpt import GPT
from pgolf.presets import tiny
from pgolf.quant.calib import generate_batch

F64 = torch.float64


def _model(seed: int, **changes) -> GPT:
    """The tiny shape with every component on (GQA, XSA on all layers, VE, BigramHash, SmearGate, U-Net
    skips, partial RoPE with the NTK rescale), random weights, float64."""
    cfg = replace(tiny().model, **changes)
    torch.manual_seed(seed)
    m = GPT(cfg).double().eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            noise = torch.randn(p.shape, generator=g, dtype=F64)
            p.add_(noise * (0.5 / math.sqrt(p.size(-1)) if p.dim() == 2 else 0.2))
    return m


@pytest.mark.parametrize("chunks", [(1,) * 40, (3, 1, 5, 8, 2, 21), (40,)])
def test_decode_equals_the_full_forward_at_the_cache_length(chunks):
    m = _model(1, rope_ref_len=16)  # 40 positions > 16: the NTK base is rescaled
    assert m.rotary.effective_base(40) != m.rotary.effective_base(16)
    idx = torch.randint(0, m.cfg.vocab_size, (3, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = m.forward_hidden(idx, rope_len=40)  # (3, 40, D)
        cache = m.new_kv_cache(40)
        got, end = [], 0
        for n in chunks:
            end += n
            got.append(m.decode_hidden(idx[:, :end], cache))
        got_t = torch.cat(got, dim=1)
    assert cache.pos == 40 and got_t.shape == want.shape
    torch.testing.assert_close(got_t, want, rtol=0, atol=1e-12)
    # rope_len is not a no-op here: the re-forward of a 20-token prefix has another base.
    with torch.no_grad():
        short = m.forward_hidden(idx[:, :20])
    assert (short - want[:, :20]).abs().max() > 1e-6


def test_decode_refuses_overflow_and_stale_state():
    m = _model(3)
    idx = torch.randint(0, m.cfg.vocab_size, (1, 6))
    cache = m.new_kv_cache(5)
    with torch.no_grad():
        m.decode_hidden(idx[:, :5], cache)
        with pytest.raises(ValueError, match="max_len 5"):
            m.decode_hidden(idx, cache)
        with pytest.raises(ValueError, match="5 cached"):
            m.decode_hidden(idx[:, :5], cache)  # nothing new


def _sample_uncached(m: GPT, n: int, seq_len: int, *, temperature: float, generator: torch.Generator,
                     rope_len: int) -> torch.Tensor:
    """The slow twin of the cached sampler: re-read the whole prefix at every step, tables of rope_len."""
    V = m.cfg.vocab_size
    x = torch.randint(0, V, (n, 1), generator=generator)
    with torch.no_grad():
        for _ in range(seq_len - 1):
            h = m.forward_hidden(x, rope_len=rope_len)[:, -1:]
            p = torch.softmax(m.logits_from_hidden(h)[:, 0, :V].float() / temperature, dim=-1)
            x = torch.cat([x, torch.multinomial(p, 1, generator=generator)], dim=1)
    return x


def test_cached_sampler_draws_the_twins_tokens():
    m = _model(4, rope_ref_len=16)
    kw = dict(vocab_size=m.cfg.vocab_size, temperature=0.8, device=torch.device("cpu"))
    fast = generate_batch(m, 3, 33, generator=torch.Generator().manual_seed(9), **kw)
    slow = _sample_uncached(m, 3, 33, temperature=0.8, generator=torch.Generator().manual_seed(9), rope_len=32)
    assert fast.shape == (3, 33) and torch.equal(fast, slow)


def test_below_the_rope_reference_length_both_samplers_are_the_original():
    m = _model(5, rope_ref_len=64)  # 33 tokens <= 64: no rescale, so the cache changes nothing
    kw = dict(vocab_size=m.cfg.vocab_size, temperature=0.8, device=torch.device("cpu"))
    fast = generate_batch(m, 4, 33, generator=torch.Generator().manual_seed(11), **kw)
    orig = generate_batch(m, 4, 33, generator=torch.Generator().manual_seed(11), kv_cache=False, **kw)
    assert torch.equal(fast, orig)
