"""Slow twins of the model (ARCHITECTURE.md 4.7 rule 6): simple float64 loops written from STACK.md
section 3, compared with the modules. These references are the spec; the modules are the fast path."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pgolf.config import ModelConfig
from pgolf.model.attention import sdpa_attention
from pgolf.model.gpt import GPT
from pgolf.model.layers import (
    CausalSelfAttention,
    Rotary,
    SmearGate,
    apply_rotary,
    bigram_bucket_ids,
    xsa_project,
)
from pgolf.presets import tiny

F64 = torch.float64


def randomize_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            noise = torch.randn(p.shape, generator=g, dtype=F64).to(p.dtype)
            p.add_(noise * (0.5 / math.sqrt(p.size(-1)) if p.dim() == 2 else 0.2))
    return model


# --------------------------------------------------------------------------------------------------
# Reference formulas (plain Python / loops, float64)
# --------------------------------------------------------------------------------------------------


def ref_rms(x: torch.Tensor) -> torch.Tensor:
    eps = torch.finfo(x.dtype).eps  # F.rms_norm's default
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)


def ref_int32(v: int) -> int:
    """What a signed 32-bit register holds after computing the integer v."""
    return (v + 2**31) % 2**32 - 2**31


def ref_bucket(tokens: list[int], t: int, buckets: int) -> int:
    if t == 0:
        return buckets - 1
    return (ref_int32(36313 * tokens[t]) ^ ref_int32(27191 * tokens[t - 1])) % (buckets - 1)


def ref_rope(x: torch.Tensor, rot_dims: int, base: float) -> torch.Tensor:
    """x (T, Dh) for one head; pair i = (dim i, dim i + R/2), angle t * base^(-2i/R)."""
    out = x.clone()
    half = rot_dims // 2
    for t in range(x.size(0)):
        for i in range(half):
            theta = t * base ** (-2 * i / rot_dims)
            c, s = math.cos(theta), math.sin(theta)
            u, w = x[t, i].item(), x[t, i + half].item()
            out[t, i] = u * c + w * s
            out[t, i + half] = w * c - u * s
    return out


def ref_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q (T, H, Dh), k/v (T, Hkv, Dh); naive per-head softmax, query head h reads kv head h // G."""
    t_len, h_n, dh = q.shape
    group = h_n // k.size(1)
    y = torch.zeros_like(q)
    for h in range(h_n):
        g = h // group
        for t in range(t_len):
            scores = torch.stack([q[t, h] @ k[s, g] / math.sqrt(dh) for s in range(t + 1)])
            p = torch.softmax(scores, 0)
            y[t, h] = sum(p[s] * v[s, g] for s in range(t + 1))
    return y


def ref_xsa(y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """y (T, H, Dh), v (T, Hkv, Dh): remove each y[t, h]'s component along its own kv head's value."""
    out = y.clone()
    group = y.size(1) // v.size(1)
    for t in range(y.size(0)):
        for h in range(y.size(1)):
            vh = v[t, h // group] / v[t, h // group].norm()
            out[t, h] = y[t, h] - (y[t, h] @ vh) * vh
    return out


def ref_attention(attn: CausalSelfAttention, x: torch.Tensor, cfg: ModelConfig, base: float,
                  ve: torch.Tensor | None) -> torch.Tensor:
    """One sequence: x (T, D) already normed; ve (T, kv_dim) or None -> (T, D)."""
    t_len = x.size(0)
    hd, h_n, hkv = cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
    rot = cfg.rope_dims or hd
    q = (x @ attn.q.T).view(t_len, h_n, hd)
    k = (x @ attn.k.T).view(t_len, hkv, hd)
    v = x @ attn.v.T
    if ve is not None:
        v = v + ve
    v = v.view(t_len, hkv, hd)
    qs, ks = [], []
    for h in range(h_n):
        qh = ref_rms(q[:, h]) if cfg.qk_norm else q[:, h]
        qs.append(ref_rope(qh, rot, base) * attn.q_gain[h])
    for g in range(hkv):
        kg = ref_rms(k[:, g]) if cfg.qk_norm else k[:, g]
        ks.append(ref_rope(kg, rot, base))
    y = ref_causal_attention(torch.stack(qs, 1), torch.stack(ks, 1), v)
    if attn.use_xsa:
        y = ref_xsa(y, v)
    return y.reshape(t_len, -1) @ attn.o.T


def ref_gpt_logits(m: GPT, idx: torch.Tensor) -> torch.Tensor:
    """The whole forward of STACK 3.2, one sequence at a time."""
    cfg = m.cfg
    base = cfg.rope_base
    t_len = idx.size(1)
    if 0 < cfg.rope_ref_len < t_len:
        rot = cfg.rope_dims or cfg.head_dim
        base = base * (t_len / cfg.rope_ref_len) ** (rot / (rot - 2))
    outs = []
    for row in idx.tolist():
        e = torch.stack([m.tok_emb[tok] for tok in row])
        if m.bigram is not None:
            for t in range(t_len):
                b = ref_bucket(row, t, cfg.bigram_buckets)
                e[t] = e[t] + m.bigram.scale * (m.bigram.proj @ m.bigram.table[b])
        e = ref_rms(e)
        if m.smear is not None:
            gate = torch.sigmoid(m.smear.w)
            e = torch.stack([(1 - gate) * e[t] + gate * (e[t - 1] if t > 0 else 0 * e[t]) for t in range(t_len)])
        x0 = x = e
        n_enc = cfg.num_layers // 2
        stack = []
        for layer, blk in enumerate(m.blocks):
            if cfg.unet_skips and layer >= n_enc and stack:
                x = x + m.skip_weights[layer - n_enc] * stack.pop()
            ve = None
            if layer in cfg.ve_layers:
                scale = m.ve.layer_scales[cfg.ve_layers.index(layer)]
                ve = torch.stack([scale * m.ve.scale * (m.ve.proj @ m.ve.table[tok]) for tok in row])
            if cfg.resid_mix:
                x = blk.resid_mix[0] * x + blk.resid_mix[1] * x0
            f = 1 / math.sqrt(layer + 1) if cfg.ln_scale else 1.0
            x = x + blk.attn_scale * ref_attention(blk.attn, ref_rms(x) * f, cfg, base, ve)
            hid = ref_rms(x) * f @ blk.mlp.up.T
            hid = torch.where(hid > 0, hid, cfg.leaky_slope * hid) if cfg.mlp_activation == "leaky_relu2" \
                else hid.clamp_min(0)
            x = x + blk.mlp_scale * (hid**2 @ blk.mlp.down.T)
            if cfg.unet_skips and layer < n_enc:
                stack.append(x)
        z = ref_rms(x) @ (m.tok_emb if m.head is None else m.head).T
        c = cfg.logit_softcap
        outs.append(c * torch.tanh(z / c) if c > 0 else z)
    return torch.stack(outs)


# --------------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------------


def test_bigram_buckets_hand_values():
    # 3072 buckets -> mod 3071, last row 3071 reserved for position 0.
    # (7 after 5):     36313*7 = 254191, 27191*5 = 135955, 254191 ^ 135955 = 127996, % 3071 = 2085
    # (1023 after 1):  37148199 ^ 27191 = 37141520, % 3071 = 846
    # (1 after 0):     36313 ^ 0 = 36313, % 3071 = 2532
    # (0 after 0):     0
    idx = torch.tensor([[5, 7, 1023], [0, 0, 1]])
    ids = bigram_bucket_ids(idx, 3072)
    # row 0, pos 2 = (1023 after 7): 37148199 ^ 190337 = 36975014, % 3071 = 174
    assert ids.tolist() == [[3071, 2085, 174], [3071, 0, 2532]]
    assert bigram_bucket_ids(torch.tensor([1, 1023]), 3072).tolist() == [3071, 846]
    assert ids.dtype == torch.int64


def test_bigram_buckets_int32_wrap():
    """36313 * 60000 = 2,178,780,000 > 2^31 - 1: int32 holds -2,116,187,296; 27191 * 65535 = 1,781,962,185
    fits. XOR = -336,912,727 and floor-mod 3071 = 541 (2048 buckets: 956)."""
    idx = torch.tensor([[65535, 60000, 59138, 59139]])
    assert bigram_bucket_ids(idx, 3072)[0, 1].item() == 541
    assert bigram_bucket_ids(idx, 2048)[0, 1].item() == 956
    # Independent witness of 32-bit semantics: numpy int32 arrays wrap on overflow.
    for buckets in (3072, 2048, 64, 2):
        x = idx[0].numpy().astype(np.int32)
        h = np.bitwise_xor(x[1:] * np.int32(36313), x[:-1] * np.int32(27191)).astype(np.int64) % (buckets - 1)
        assert bigram_bucket_ids(idx, buckets)[0, 1:].tolist() == h.tolist()
        assert bigram_bucket_ids(idx, buckets)[0, 1:].tolist() == [
            ref_bucket(idx[0].tolist(), t, buckets) for t in range(1, 4)]


def test_bigram_buckets_random_vs_reference():
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 65536, (3, 50), generator=g)
    ids = bigram_bucket_ids(idx, 3072)
    for r, row in enumerate(idx.tolist()):
        assert ids[r].tolist() == [ref_bucket(row, t, 3072) for t in range(50)]
    assert ids.min() >= 0 and ids.max() <= 3071
    assert torch.all(ids[:, 0] == 3071) and torch.all(ids[:, 1:] < 3071)


def test_rope_ntk_base():
    rot = Rotary(head_dim=64, rope_dims=16, base=10000.0, ref_len=1024)
    assert rot.effective_base(2048) == pytest.approx(10000 * 2 ** (16 / 14))
    assert rot.effective_base(2048) == pytest.approx(22082, abs=1)
    assert rot.effective_base(1024) == 10000.0 and rot.effective_base(16) == 10000.0
    assert Rotary(64, 16, 10000.0, 0).effective_base(4096) == 10000.0
    assert Rotary(64, 0, 10000.0, 0).dims == 64  # rope_dims = 0 means all head dims
    with pytest.raises(ValueError):
        Rotary(64, 2, 10000.0, 1024)


@pytest.mark.parametrize(("t_len", "ref_len"), [(12, 0), (12, 8)])
def test_partial_rope_vs_reference(t_len, ref_len):
    rot = Rotary(head_dim=16, rope_dims=8, base=10000.0, ref_len=ref_len)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, t_len, 3, 16, generator=g, dtype=F64)  # (B, T, H, Dh)
    cos, sin = rot(t_len, x.device, F64)
    y = apply_rotary(x, cos, sin)
    assert torch.equal(y[..., 8:], x[..., 8:])  # non-rotary dims untouched
    base = rot.effective_base(t_len)
    assert (base > 10000.0) == (ref_len > 0)
    for b in range(2):
        for h in range(3):
            torch.testing.assert_close(y[b, :, h], ref_rope(x[b, :, h], 8, base), atol=1e-12, rtol=0)
    # a rotation: each (i, i + R/2) pair keeps its norm
    pairs = lambda z: z[..., :4] ** 2 + z[..., 4:8] ** 2  # noqa: E731
    torch.testing.assert_close(pairs(y), pairs(x))


def test_smear_gate_vs_reference():
    sg = SmearGate(6).double()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        sg.w.copy_(torch.randn(6, generator=g, dtype=F64))
    e = torch.randn(2, 5, 6, generator=g, dtype=F64)
    out = sg(e)
    gate = torch.sigmoid(sg.w)
    for b in range(2):
        for t in range(5):
            prev = e[b, t - 1] if t > 0 else torch.zeros(6, dtype=F64)
            torch.testing.assert_close(out[b, t], (1 - gate) * e[b, t] + gate * prev)
    with torch.no_grad():
        sg.w.zero_()
    torch.testing.assert_close(sg(e)[:, 0], 0.5 * e[:, 0])  # init: g = 0.5, e_{-1} = 0


@pytest.mark.parametrize(("heads", "kv_heads"), [(4, 2), (4, 4), (4, 1)])
def test_gqa_sdpa_vs_naive(heads, kv_heads):
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 7, heads, 8, generator=g, dtype=F64)
    k = torch.randn(2, 7, kv_heads, 8, generator=g, dtype=F64)
    v = torch.randn(2, 7, kv_heads, 8, generator=g, dtype=F64)
    y = sdpa_attention(q, k, v)
    assert y.shape == q.shape
    for b in range(2):
        torch.testing.assert_close(y[b], ref_causal_attention(q[b], k[b], v[b]), atol=1e-12, rtol=0)


def test_xsa_vs_reference_and_orthogonal():
    g = torch.Generator().manual_seed(4)
    y = torch.randn(2, 5, 4, 8, generator=g, dtype=F64)
    v = torch.randn(2, 5, 2, 8, generator=g, dtype=F64)
    out = xsa_project(y, v)
    for b in range(2):
        torch.testing.assert_close(out[b], ref_xsa(y[b], v[b]), atol=1e-12, rtol=0)
    own_v = v.repeat_interleave(2, dim=2)  # (B, T, H, Dh): query head h -> kv head h // 2
    assert (out * own_v).sum(-1).abs().max().item() < 1e-12
    # idempotent; and the removed part is parallel to v
    torch.testing.assert_close(xsa_project(out, v), out)


@pytest.mark.parametrize("xsa", [True, False])
def test_attention_module_vs_reference(xsa):
    cfg = replace(tiny().model, rope_ref_len=4)  # T = 6 > 4: NTK base in use
    attn = CausalSelfAttention(cfg, use_xsa=xsa).double()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in attn.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=F64) / math.sqrt(p.size(-1)))
        attn.q_gain.copy_(torch.tensor([5.0, 1.5, 0.5, 2.0], dtype=F64))
    x = torch.randn(2, 6, cfg.model_dim, generator=g, dtype=F64)
    ve = torch.randn(2, 6, cfg.kv_dim, generator=g, dtype=F64)
    rot = Rotary(cfg.head_dim, cfg.rope_dims, cfg.rope_base, cfg.rope_ref_len)
    cos, sin = rot(6, x.device, F64)
    out = attn(x, cos, sin, ve)
    base = rot.effective_base(6)
    with torch.no_grad():
        for b in range(2):
            torch.testing.assert_close(out[b], ref_attention(attn, x[b], cfg, base, ve[b]), atol=1e-10, rtol=0)


def test_softcap():
    torch.manual_seed(6)
    m = randomize_(GPT(tiny().model).double(), 7)
    h = 40 * torch.randn(1, 3, m.cfg.model_dim, dtype=F64)  # large, so the cap bites
    with torch.no_grad():
        raw = h @ m.tok_emb.T
        out = m.logits_from_hidden(h)
        torch.testing.assert_close(out, 30 * torch.tanh(raw / 30))
        assert out.abs().max() < 30 and raw.abs().max() > 30
        m.cfg = replace(m.cfg, logit_softcap=0.0)
        torch.testing.assert_close(m.logits_from_hidden(h), raw)


@pytest.mark.parametrize("ln_scale", [True, False])
def test_ln_scale_feeds_scaled_norms(ln_scale):
    cfg = replace(tiny().model, num_layers=4, xsa_last_n=4, ve_layers=(3,), ln_scale=ln_scale)
    torch.manual_seed(8)
    m = randomize_(GPT(cfg).double(), 9)
    rec: dict[int, dict[str, torch.Tensor]] = {}
    for layer, blk in enumerate(m.blocks):
        r = rec.setdefault(layer, {})
        blk.register_forward_hook(lambda mod, a, o, r=r: r.update(x=a[0], x0=a[1]))
        blk.attn.register_forward_hook(lambda mod, a, o, r=r: r.update(attn_in=a[0], attn_out=o))
        blk.mlp.register_forward_pre_hook(lambda mod, a, r=r: r.update(mlp_in=a[0]))
    with torch.no_grad():
        m(torch.randint(0, cfg.vocab_size, (1, 9)))
        for layer, blk in enumerate(m.blocks):
            r = rec[layer]
            f = 1 / math.sqrt(layer + 1) if ln_scale else 1.0
            x_in = blk.resid_mix[0] * r["x"] + blk.resid_mix[1] * r["x0"]
            torch.testing.assert_close(r["attn_in"], ref_rms(x_in) * f)
            x_mid = x_in + blk.attn_scale * r["attn_out"]
            torch.testing.assert_close(r["mlp_in"], ref_rms(x_mid) * f)


@pytest.mark.parametrize("num_layers", [5, 4])
def test_unet_skips_are_lifo(num_layers):
    cfg = replace(tiny().model, num_layers=num_layers, xsa_last_n=num_layers, ve_layers=())
    torch.manual_seed(10)
    m = randomize_(GPT(cfg).double(), 11)
    ins, outs = [], []

    def record_io(mod, args, out):  # returns None: a forward hook's return value would replace `out`
        ins.append(args[0])
        outs.append(out)

    for blk in m.blocks:
        blk.register_forward_hook(record_io)
    with torch.no_grad():
        m(torch.randint(0, cfg.vocab_size, (2, 6)))
        n_enc = num_layers // 2
        assert m.skip_weights.shape == (n_enc, cfg.model_dim)
        for i in range(1, n_enc):  # encoder blocks chain plainly
            assert torch.equal(ins[i], outs[i - 1])
        for j in range(num_layers - n_enc):  # decoder j gets encoder n_enc-1-j, or nothing
            expect = outs[n_enc + j - 1]
            if j < n_enc:
                expect = expect + m.skip_weights[j] * outs[n_enc - 1 - j]
            torch.testing.assert_close(ins[n_enc + j], expect, atol=1e-14, rtol=0)


@pytest.mark.parametrize("variant", ["tiny", "odd_layers_untied", "baseline_like"])
def test_full_model_vs_reference(variant):
    cfg = tiny().model
    if variant == "odd_layers_untied":
        cfg = replace(cfg, num_layers=3, xsa_last_n=1, ve_layers=(0, 2), tie_embeddings=False, rope_ref_len=6)
    elif variant == "baseline_like":
        cfg = replace(cfg, mlp_activation="relu2", rope_dims=0, rope_ref_len=0, ln_scale=False, xsa_last_n=0,
                      bigram_buckets=0, smear_gate=False, ve_layers=(), unet_skips=False, resid_mix=False,
                      qk_norm=False)
    torch.manual_seed(12)
    m = randomize_(GPT(cfg).double(), 13)
    idx = torch.randint(0, cfg.vocab_size, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(m(idx), ref_gpt_logits(m, idx), atol=1e-10, rtol=0)


def test_loss_is_cross_entropy_of_reference_logits():
    torch.manual_seed(14)
    m = randomize_(GPT(tiny().model).double(), 15)
    idx = torch.randint(0, m.cfg.vocab_size, (2, 8))
    tgt = torch.randint(0, m.cfg.vocab_size, (2, 8))
    with torch.no_grad():
        logits = ref_gpt_logits(m, idx)
        nll = torch.logsumexp(logits, -1) - logits.gather(-1, tgt[..., None])[..., 0]
        torch.testing.assert_close(m.loss(idx, tgt, reduction="none"), nll, atol=1e-10, rtol=0)
        assert F.cross_entropy(logits.reshape(-1, logits.size(-1)), tgt.reshape(-1)).item() == pytest.approx(
            m.loss(idx, tgt).item(), abs=1e-10)
