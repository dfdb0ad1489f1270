"""GPT structure, parameter counts, roles, init, causality, purity (STACK.md section 3)."""

from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from pgolf.config import ModelConfig
from pgolf.model import gpt as gpt_module
from pgolf.model import layers as layers_module
from pgolf.model.attention import sdpa_attention
from pgolf.model.gpt import GPT
from pgolf.model.roles import Role, role_of, roles_by_name
from pgolf.presets import PRESETS, record, tiny

RECORD_PARAMS = 27_067_484  # PR #1019 log line model_params (BigramHash 3072 x 112)
RECORD_2048x128_PARAMS = 26_993_756  # PR #1350/#1351 (BigramHash 2048 x 128)
RECORD_MATRIX_PARAMS = 25_952_256  # 11 x (2*512*512 + 2*256*512 + 2*1536*512)


def meta_model(cfg: ModelConfig) -> GPT:
    """Shapes and roles only: building on the meta device skips the (slow on CPU) orthogonal init."""
    with torch.device("meta"):
        return GPT(cfg)


def randomize_(model: GPT, seed: int) -> GPT:
    """Move every parameter off its init (o/down are zero at init, which would hide most of the model)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype)
            p.add_(noise * (0.5 / math.sqrt(p.size(-1)) if p.dim() == 2 else 0.2))
    return model


# --------------------------------------------------------------------------------------------------
# Parameter counts and roles
# --------------------------------------------------------------------------------------------------


def test_record_param_count_and_roles():
    m = meta_model(record().model)
    assert m.num_params() == RECORD_PARAMS
    by_role = m.param_count_by_role()
    assert by_role == {
        "matrix": RECORD_MATRIX_PARAMS,
        "embed": 1024 * 512 + 3072 * 112 + 1024 * 128,  # tok_emb, bigram table, VE table
        "head": 0,
        "proj": 512 * 112 + 256 * 128,  # bigram and VE projections
        # per block: attn/mlp scales, resid_mix, q_gain; skip weights; bigram scale; VE scale + 2 layer scales
        "scalar": 11 * (512 + 512 + 2 * 512 + 8) + 5 * 512 + 1 + 1 + 2,
        "gate": 512,
    }
    assert sum(by_role.values()) == RECORD_PARAMS


def test_record_bigram_2048x128_param_count():
    m = meta_model(replace(record().model, bigram_buckets=2048, bigram_dim=128))
    assert m.num_params() == RECORD_2048x128_PARAMS
    assert m.param_count_by_role()["matrix"] == RECORD_MATRIX_PARAMS


def test_matrices_are_2d_one_per_layer():
    m = meta_model(record().model)
    mats = [(n, p) for n, p in m.named_parameters() if role_of(p) is Role.MATRIX]
    assert len(mats) == 6 * 11
    assert all(p.dim() == 2 for _, p in mats)
    assert {tuple(p.shape) for _, p in mats} == {(512, 512), (256, 512), (1536, 512), (512, 1536)}


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("tied", [True, False])
def test_every_parameter_has_exactly_one_role(preset, tied):
    cfg = replace(PRESETS[preset]().model, tie_embeddings=tied)
    m = meta_model(cfg)
    names = roles_by_name(m)  # raises on an untagged parameter
    assert len(names) == len(list(m.parameters()))
    assert all(isinstance(r, Role) for r in names.values())
    assert sum(m.param_count_by_role().values()) == m.num_params()
    assert (m.param_count_by_role()["head"] > 0) == (not tied)


def test_roles_survive_dtype_and_device_moves():
    m = GPT(tiny().model).double()
    assert roles_by_name(m) == roles_by_name(GPT(tiny().model))


_D, _L, _V = 512, 11, 1024
_SWITCHES = [
    ("xsa_last_n", 0, 0),  # XSA has no parameters
    ("bigram_buckets", 0, 3072 * 112 + 512 * 112 + 1),
    ("ve_layers", (), 1024 * 128 + 256 * 128 + 1 + 2),
    ("smear_gate", False, _D),
    ("unet_skips", False, (_L // 2) * _D),
    ("resid_mix", False, _L * 2 * _D),
    ("qk_norm", False, 0),
    ("ln_scale", False, 0),
    ("mlp_activation", "relu2", 0),
]


@pytest.mark.parametrize(("field", "value", "removed"), _SWITCHES, ids=[s[0] for s in _SWITCHES])
def test_switches_remove_exactly_their_parameters(field, value, removed):
    m = meta_model(replace(record().model, **{field: value}))
    assert RECORD_PARAMS - m.num_params() == removed
    assert m.param_count_by_role()["matrix"] == RECORD_MATRIX_PARAMS


def test_all_switches_off_and_untied_head():
    cfg = replace(record().model, xsa_last_n=0, bigram_buckets=0, ve_layers=(), smear_gate=False,
                  unet_skips=False, resid_mix=False)
    m = meta_model(cfg)
    removed = sum(r for _, _, r in _SWITCHES)
    assert m.num_params() == RECORD_PARAMS - removed
    # what is left: matrices, tok_emb, and per block attn/mlp scales + q_gain
    assert m.param_count_by_role() == {"matrix": RECORD_MATRIX_PARAMS, "embed": _V * _D, "head": 0, "proj": 0,
                                       "scalar": _L * (2 * _D + 8), "gate": 0}
    untied = meta_model(replace(cfg, tie_embeddings=False))
    assert untied.num_params() - m.num_params() == _V * _D
    assert untied.param_count_by_role()["head"] == _V * _D


# --------------------------------------------------------------------------------------------------
# Init
# --------------------------------------------------------------------------------------------------


def test_init_values():
    cfg = tiny().model
    torch.manual_seed(0)
    m = GPT(cfg).double()
    for block in m.blocks:
        for w in (block.attn.q, block.attn.k, block.attn.v, block.mlp.up):
            # orthogonal: the shorter side is orthonormal
            gram = w @ w.T if w.size(0) <= w.size(1) else w.T @ w
            torch.testing.assert_close(gram, torch.eye(gram.size(0), dtype=gram.dtype), atol=1e-6, rtol=0)
        assert not block.attn.o.any() and not block.mlp.down.any()
        assert torch.all(block.attn.q_gain == cfg.qk_gain_init)
        assert torch.all(block.attn_scale == 1) and torch.all(block.mlp_scale == 1)
        assert torch.all(block.resid_mix[0] == 1) and torch.all(block.resid_mix[1] == 0)
    assert torch.all(m.skip_weights == 1)
    assert not m.smear.w.any()
    assert not m.bigram.table.any() and m.bigram.scale.item() == pytest.approx(0.05)
    assert m.ve.scale.item() == pytest.approx(0.1) and torch.all(m.ve.layer_scales == 1)
    for proj in (m.bigram.proj, m.ve.proj):  # STACK 3.7: the orthogonal pass overrides their zero init
        gram = proj.T @ proj if proj.size(0) >= proj.size(1) else proj @ proj.T
        torch.testing.assert_close(gram, torch.eye(gram.size(0), dtype=gram.dtype), atol=1e-6, rtol=0)
    assert m.tok_emb.std().item() == pytest.approx(cfg.tied_embed_init_std, rel=0.1)
    assert m.ve.table.std().item() == pytest.approx(0.01, rel=0.1)


def test_ortho_init_off_uses_uniform():
    m = GPT(replace(tiny().model, ortho_init=False))
    q = m.blocks[0].attn.q
    assert q.abs().max().item() <= 1 / math.sqrt(q.size(1))


def test_blocks_are_identity_at_init_and_branches():
    """o and down are zero and resid_mix = (1, 0), so every block returns its input exactly."""
    torch.manual_seed(1)
    m = GPT(tiny().model).double()
    seen = []
    for block in m.blocks:
        block.register_forward_hook(lambda mod, args, out: seen.append((args[0], out)))
    idx = torch.randint(0, m.cfg.vocab_size, (2, 12))
    h = m.forward_hidden(idx)
    assert len(seen) == len(m.blocks)
    for x_in, x_out in seen:
        assert torch.equal(x_in, x_out)
    # hence the final hidden state is rms(x0 * (1 + number of skips)) = rms(x0)
    torch.testing.assert_close(h, torch.nn.functional.rms_norm(m.embed(idx), (m.cfg.model_dim,)))
    assert not m.bigram(idx).any()  # zero bigram table -> zero branch at step 0
    assert m.ve(idx).abs().sum() > 0  # VE branch is live from the start (STACK 3.7)


def test_determinism_same_seed():
    cfg = tiny().model
    torch.manual_seed(123)
    a = GPT(cfg)
    torch.manual_seed(123)
    b = GPT(cfg)
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert na == nb and torch.equal(pa, pb)
    a.init_weights(torch.Generator().manual_seed(7))
    b.init_weights(torch.Generator().manual_seed(7))
    assert all(torch.equal(pa, pb) for pa, pb in zip(a.parameters(), b.parameters(), strict=True))
    b.init_weights(torch.Generator().manual_seed(8))
    assert not torch.equal(a.blocks[0].attn.q, b.blocks[0].attn.q)


# --------------------------------------------------------------------------------------------------
# Forward behaviour
# --------------------------------------------------------------------------------------------------


def test_causality_exact_float64():
    torch.manual_seed(2)
    m = randomize_(GPT(tiny().model).double(), seed=3)
    idx = torch.randint(0, m.cfg.vocab_size, (2, 20))
    with torch.no_grad():
        base = m(idx)
        for t in (0, 1, 7, 19):
            changed = idx.clone()
            changed[:, t] = (changed[:, t] + 17) % m.cfg.vocab_size
            out = m(changed)
            assert torch.equal(out[:, :t], base[:, :t]), f"position < {t} saw token {t}"
            assert not torch.allclose(out[:, t], base[:, t])


def test_forward_hidden_then_head_equals_forward_and_loss_reductions():
    torch.manual_seed(4)
    m = randomize_(GPT(tiny().model).double(), seed=5)
    idx = torch.randint(0, m.cfg.vocab_size, (2, 10))
    tgt = torch.randint(0, m.cfg.vocab_size, (2, 10))
    with torch.no_grad():
        logits = m(idx)
        assert logits.shape == (2, 10, m.cfg.vocab_size) and logits.dtype == torch.float64
        assert torch.equal(m.logits_from_hidden(m.forward_hidden(idx)), logits)
        nll = m.loss(idx, tgt, reduction="none")
        assert nll.shape == (2, 10)
        ref = -torch.log_softmax(logits, -1).gather(-1, tgt[..., None])[..., 0]
        torch.testing.assert_close(nll, ref)
        torch.testing.assert_close(m.loss(idx, tgt), nll.mean())
        torch.testing.assert_close(m.loss(idx, tgt, reduction="sum"), nll.sum())
    with pytest.raises(ValueError):
        m.loss(idx, tgt, reduction="avg")


@pytest.mark.parametrize("preset,seq", [("tiny", 32), ("record", 16)])
def test_forward_backward_at_init(preset, seq):
    """Initial loss is ln V up to the tiny tied-logit spread (|z . e| ~ 0.005 * sqrt(D)): tolerance 0.05."""
    cfg = PRESETS[preset]().model
    torch.manual_seed(6)
    m = GPT(cfg)
    idx = torch.randint(0, cfg.vocab_size, (2, seq))
    tgt = torch.randint(0, cfg.vocab_size, (2, seq))
    logits = m(idx)
    assert logits.dtype == torch.float32 and logits.shape == (2, seq, cfg.vocab_size)
    loss = m.loss(idx, tgt)
    assert abs(loss.item() - math.log(cfg.vocab_size)) < 0.05
    loss.backward()
    grads = [p.grad for p in m.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # o/down are zero at init, yet they receive gradient (the rest of each block starts from them)
    assert m.blocks[-1].attn.o.grad.abs().sum() > 0 and m.blocks[-1].mlp.down.grad.abs().sum() > 0


def test_bf16_autocast_gives_fp32_logits():
    dtypes = []

    def impl(q, k, v):  # an injected kernel (FA3) is not autocast-aware: it must get one dtype
        dtypes.append((q.dtype, k.dtype, v.dtype))
        return sdpa_attention(q, k, v)

    torch.manual_seed(7)
    m = randomize_(GPT(tiny().model, attn_impl=impl), seed=8)
    idx = torch.randint(0, m.cfg.vocab_size, (2, 40))  # 40 > rope_ref_len = 32: NTK path too
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = m(idx)
        loss = m.loss(idx, idx)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    assert set(dtypes) == {(torch.bfloat16,) * 3}
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())


def test_attn_impl_is_injected():
    calls = []

    def impl(q, k, v):
        calls.append((q.shape, k.shape))
        return sdpa_attention(q, k, v)

    cfg = tiny().model
    torch.manual_seed(9)
    a = GPT(cfg, attn_impl=impl)
    torch.manual_seed(9)
    b = GPT(cfg)
    idx = torch.randint(0, cfg.vocab_size, (1, 8))
    randomize_(a, 10)
    randomize_(b, 10)
    torch.testing.assert_close(a(idx), b(idx))
    assert calls == [(torch.Size([1, 8, cfg.num_heads, cfg.head_dim]),
                      torch.Size([1, 8, cfg.num_kv_heads, cfg.head_dim]))] * cfg.num_layers


def test_baseline_shape_runs():
    cfg = replace(PRESETS["baseline"]().model, num_layers=2, model_dim=64, num_heads=4, num_kv_heads=2,
                  vocab_size=128)
    m = GPT(cfg)
    idx = torch.randint(0, 128, (1, 8))
    assert m.skip_weights is None and m.bigram is None and m.ve is None and m.smear is None
    assert m.rotary.dims == cfg.head_dim
    assert abs(m.loss(idx, torch.randint(0, 128, (1, 8))).item() - math.log(128)) < 0.05


# --------------------------------------------------------------------------------------------------
# Purity (ARCHITECTURE.md 4.7 rule 1)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", [gpt_module, layers_module], ids=["gpt", "layers"])
def test_model_code_is_pure(module):
    src = Path(module.__file__).read_text()
    for pattern in (r"os\.environ", r"getenv", r"torch\.distributed", r"\bprint\s*\(", r"\blogging\b"):
        assert not re.search(pattern, src), f"{Path(module.__file__).name} matches {pattern!r}"
