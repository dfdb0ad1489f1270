"""Quantization building blocks: grids, packing, the artifact container, Hessian collection, role -> scheme."""

from __future__ import annotations

import struct
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from pgolf.config import model_from_dict, to_dict
from pgolf.model.gpt import GPT
from pgolf.model.layers import rms_norm
from pgolf.model.roles import Role, roles_by_name
from pgolf.presets import tiny
from pgolf.quant import artifact, codecs, container, schemes
from pgolf.quant.grid import (
    EMBED_QUANTILE,
    FP16_TINY,
    candidate_scales,
    dequantize,
    qmax_for,
    quantize_rtn,
    row_clip_quantize,
    row_quantile,
    rtn_quantize,
    scales_from_clip,
)
from pgolf.quant.hessian import collect_hessians
from pgolf.quant.pack import (
    byte_shuffle,
    byte_unshuffle,
    from_int8_plane,
    int8_plane,
    pack_int6,
    packed_int6_nbytes,
    unpack_int6,
)

# --------------------------------------------------------------------------------------------------
# Grid
# --------------------------------------------------------------------------------------------------


def test_qmax():
    assert [qmax_for(b) for b in (5, 6, 7, 8)] == [15, 31, 63, 127]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), bits=st.sampled_from([5, 6, 7, 8]), rows=st.integers(1, 8),
       cols=st.integers(1, 40), clip=st.sampled_from(["percentile", "sdclip"]),
       log_std=st.floats(-6, 1))
def test_rtn_error_is_at_most_half_a_step_off_the_clip_region(seed, bits, rows, cols, clip, log_std):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(rows, cols, generator=g) * 10.0**log_std
    Q, s = rtn_quantize(W, bits=bits, clip=clip, sdclip_k=3.0)
    qmax = qmax_for(bits)
    assert Q.dtype == torch.int8 and s.dtype == torch.float16 and s.shape == (rows,)
    assert int(Q.abs().max()) <= qmax and bool((s > 0).all())
    s32 = s.float()[:, None]
    err = (W - dequantize(Q, s)).abs()
    inside = W.abs() <= qmax * s32  # off the clip region: representable without saturation
    # |w - q s| <= s/2 up to the fp32 rounding of w / s (a few ulps of |w|).
    tol = s32 / 2 + 4 * torch.finfo(torch.float32).eps * W.abs()
    assert bool((err <= tol)[inside].all())
    # In the clip region the value saturates to +/- qmax with the sign of w.
    outside = ~inside
    assert bool((Q[outside].abs() == qmax).all())
    assert bool((torch.sign(Q[outside].float()) == torch.sign(W[outside])).all())


def test_int6_range_and_fp16_scales():
    W = torch.randn(16, 300) * 0.03
    W[0, 0] = 5.0  # an outlier the clip search cuts off
    Q, s = rtn_quantize(W, bits=6)
    assert Q.dtype == torch.int8 and int(Q.min()) >= -31 and int(Q.max()) <= 31
    assert s.dtype == torch.float16
    assert torch.equal(Q, quantize_rtn(W, 6, s))
    assert int(Q.abs().max()) == 31


def test_scales_floor_and_zero_rows():
    W = torch.zeros(3, 10)
    Q, s = rtn_quantize(W, bits=6, scale_floor=1e-8)
    assert bool((s > 0).all()) and float(s.float().min()) >= FP16_TINY
    assert torch.equal(Q, torch.zeros_like(Q))
    s2 = scales_from_clip(torch.tensor([0.0, 31.0, 1e9]), 6, 1e-3)
    assert s2.dtype == torch.float16 and torch.isfinite(s2).all()
    assert s2.float().tolist()[:2] == [pytest.approx(1e-3, rel=1e-3), 1.0]


def test_row_quantile_matches_torch():
    A = torch.rand(5, 777)
    for q in (0.0, 0.5, 0.999, 0.9999, EMBED_QUANTILE, 1.0):
        torch.testing.assert_close(row_quantile(A, q), torch.quantile(A, q, dim=1), rtol=1e-6, atol=1e-7)


def test_candidates_and_sdclip():
    W = torch.randn(4, 1000)
    c = candidate_scales(W, 6, "percentile", 12.85, 1e-8)
    assert c.shape == (5, 4) and c.dtype == torch.float16
    assert bool((c[:-1] <= c[-1]).all())  # the row max is the widest clip
    torch.testing.assert_close(c[-1].float(), (W.abs().amax(1) / 31).half().float())
    sd = candidate_scales(W, 6, "sdclip", 12.85, 1e-8)
    torch.testing.assert_close(sd[0].float(), (12.85 * W.std(1, correction=0) / 31).half().float())
    Q, s = row_clip_quantize(W, bits=8)
    assert int(Q.abs().max()) <= 127 and s.dtype == torch.float16
    with pytest.raises(ValueError):
        candidate_scales(W, 6, "bogus", 1.0, 1e-8)


# --------------------------------------------------------------------------------------------------
# Packing
# --------------------------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(n=st.integers(0, 1001), seed=st.integers(0, 2**31 - 1))
def test_int6_pack_round_trip(n, seed):
    q = np.random.default_rng(seed).integers(-32, 32, size=n, dtype=np.int8)
    b = pack_int6(q)
    assert b.dtype == np.uint8 and b.size == packed_int6_nbytes(n) == 3 * ((n + 3) // 4)
    assert np.array_equal(unpack_int6(b, n), q)
    assert np.array_equal(unpack_int6(b.tobytes(), n), q)


def test_int6_pack_layout_and_limits():
    # a | b << 6 | c << 12 | d << 18, little-endian; -1 is 0x3F.
    assert pack_int6(np.array([1, 0, 0, 0])).tolist() == [1, 0, 0]
    assert pack_int6(np.array([-1, -1, -1, -1])).tolist() == [255, 255, 255]
    assert pack_int6(np.array([0, 0, 0, 1])).tolist() == [0, 0, 4]
    with pytest.raises(ValueError):
        pack_int6(np.array([32]))
    with pytest.raises(ValueError):
        unpack_int6(b"\x00\x00", 1)


@settings(max_examples=50, deadline=None)
@given(data=st.binary(min_size=0, max_size=300), stride=st.integers(1, 7))
def test_shuffle_round_trip(data, stride):
    s = byte_shuffle(data, stride)
    assert s.size == len(data)
    assert byte_unshuffle(s, stride).tobytes() == data
    if stride == 1:
        assert s.tobytes() == data


def test_shuffle_layout_and_int8_plane():
    assert byte_shuffle(b"aAbBcCx", 2).tobytes() == b"abcABCx"
    q = np.arange(-127, 128, dtype=np.int8).reshape(5, 51)
    assert np.array_equal(from_int8_plane(int8_plane(q), q.shape), q)


# --------------------------------------------------------------------------------------------------
# Artifact
# --------------------------------------------------------------------------------------------------


def _tiny_model(seed: int = 0) -> GPT:
    cfg = tiny().model
    torch.manual_seed(seed)
    m = GPT(cfg)
    with torch.no_grad():  # trained-looking weights: the zero-initialized matrices/tables get values too
        g = torch.Generator().manual_seed(seed)
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return m


@pytest.fixture(scope="module")
def rtn_tensors():
    m = _tiny_model()
    qc = replace(tiny().quant, method="rtn")
    return m, schemes.quantize_model(m, qc, None)


def test_every_parameter_gets_exactly_one_scheme_by_role(rtn_tensors):
    m, tensors = rtn_tensors
    roles = roles_by_name(m)
    assert set(tensors) == set(roles)
    want = {Role.MATRIX: "rtn_int6", Role.EMBED: "pctl_int8", Role.HEAD: "pctl_int8", Role.PROJ: "fp16",
            Role.SCALAR: "fp16", Role.GATE: "fp16"}
    for name, entry in tensors.items():
        assert entry[0] == want[roles[name]], name
    bits = tiny().quant
    m7 = schemes.quantize_model(m, replace(bits, method="rtn", matrix_bits=7, embed_bits=6, clip="sdclip"))
    assert {e[0] for n, e in m7.items() if roles[n] is Role.MATRIX} == {"rtn_int7"}
    assert {e[0] for n, e in m7.items() if roles[n] is Role.EMBED} == {"sdclip_int6"}


def test_quantize_model_uses_gptq_with_hessians():
    m = _tiny_model(1)
    idx = torch.randint(0, m.cfg.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    H = collect_hessians(m, [idx])
    qc = tiny().quant
    t = schemes.quantize_model(m, qc, H)
    roles = roles_by_name(m)
    assert {e[0] for n, e in t.items() if roles[n] is Role.MATRIX} == {"gptq_int6"}
    partial = {k: v for i, (k, v) in enumerate(H.items()) if i > 0}
    t2 = schemes.quantize_model(m, qc, partial)  # no Hessian for the first matrix: RTN for it alone
    first = next(iter(H))
    assert t2[first][0] == "rtn_int6"


@pytest.mark.parametrize("layout", ["int8", "int6p"])
def test_write_read_round_trip(tmp_path, rtn_tensors, layout):
    m, tensors = rtn_tensors
    p = tmp_path / "m.pgart"
    n = container.write_artifact(p, to_dict(m.cfg), tensors, "zstd", roles=roles_by_name(m), layout=layout)
    assert n == p.stat().st_size == container.artifact_bytes(p)
    manifest, back = container.read_artifact(p)
    assert manifest["format_version"] == 1 and manifest["compressor"] == "zstd"
    assert manifest["schemes"]["matrix"] == ["rtn_int6"] and manifest["schemes"]["scalar"] == ["fp16"]
    assert set(back) == set(tensors)
    for name, entry in tensors.items():
        got = back[name]
        assert got.scheme == entry.scheme and (got.scale is None) == (entry.scale is None)
        for a, b in zip(entry[1:], got[1:]):
            assert (a is None and b is None) or (a.dtype == b.dtype and torch.equal(a, b)), name
    assert model_from_dict(manifest["model"], "test") == m.cfg


def test_load_artifact_reproduces_in_memory_logits_exactly(tmp_path, rtn_tensors):
    m, tensors = rtn_tensors
    p = tmp_path / "m.pgart"
    artifact.save_model_artifact(p, m, tensors, replace(tiny().quant, compressor="lzma"))
    state = torch.random.get_rng_state()
    loaded = artifact.load_artifact(p)
    assert torch.equal(state, torch.random.get_rng_state())  # rebuilding does not disturb the caller's RNG
    in_mem = schemes.dequantized_copy(m, tensors).eval()
    idx = torch.randint(0, m.cfg.vocab_size, (2, 48), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a, b = in_mem(idx), loaded(idx)
        assert torch.equal(a, b)
        assert not torch.equal(a, m(idx))  # quantization did change something
    assert not loaded.training


def test_each_compressor_round_trips_and_auto_picks_smallest(tmp_path, rtn_tensors):
    m, tensors = rtn_tensors
    sizes = {}
    for c in codecs.COMPRESSORS:
        p = tmp_path / f"{c}.pgart"
        sizes[c] = container.write_artifact(p, to_dict(m.cfg), tensors, c)
        manifest, back = container.read_artifact(p)
        assert manifest["compressor"] == c
        assert all(torch.equal(back[k][1], tensors[k][1]) for k in tensors)
    p = tmp_path / "auto.pgart"
    n = container.write_artifact(p, to_dict(m.cfg), tensors, "auto")
    manifest, _ = container.read_artifact(p)
    best = min(codecs.COMPRESSORS, key=lambda c: manifest["compressed_sizes"][c])
    assert manifest["compressor"] == best
    assert n == min(sizes.values()) + (n - sizes[best])  # same payload, only the manifest differs
    assert manifest["compressed_sizes"][best] == min(manifest["compressed_sizes"].values())
    with pytest.raises(ValueError):
        codecs.compress(b"x", "gzip")


def test_reader_errors_are_one_line_and_name_the_file(tmp_path, rtn_tensors):
    m, tensors = rtn_tensors
    p = tmp_path / "m.pgart"
    container.write_artifact(p, to_dict(m.cfg), tensors, "zstd")
    data = p.read_bytes()

    def err(blob: bytes) -> str:
        q = tmp_path / "bad.pgart"
        q.write_bytes(blob)
        with pytest.raises(container.ArtifactError) as ei:
            container.read_artifact(q)
        msg = str(ei.value)
        assert "\n" not in msg and str(q) in msg
        return msg

    assert "bad magic" in err(b"NOTPGOLF" + data[8:])
    assert "version 7" in err(data[:8] + struct.pack("<H", 7) + data[10:])
    assert "truncated" in err(data[:-1])
    assert "truncated" in err(data[:20])
    assert "trailing" in err(data + b"\0")
    flipped = bytearray(data)
    flipped[-5] ^= 0x10
    assert "checksum" in err(bytes(flipped))
    with pytest.raises(container.ArtifactError, match="cannot open"):
        container.read_artifact(tmp_path / "missing.pgart")


def test_entropy_bound(rtn_tensors):
    _, tensors = rtn_tensors
    e = schemes.entropy_bytes(tensors)
    n_sym = sum(t[1].numel() for t in tensors.values() if t[0] != "fp16")
    assert 0 < e["symbols"] <= n_sym  # at most 8 bits per symbol
    assert e["total"] == e["symbols"] + e["scales"] + e["passthrough"]


# --------------------------------------------------------------------------------------------------
# Hessians
# --------------------------------------------------------------------------------------------------


def test_hessians_shared_inputs_hand_check_and_psd():
    m = _tiny_model(2)
    g = torch.Generator().manual_seed(5)
    batches = [torch.randint(0, m.cfg.vocab_size, (2, 32), generator=g) for _ in range(2)]
    linear = F.linear
    H = collect_hessians(m, batches)
    assert F.linear is linear  # the recorder is removed again
    names = [n for n, r in roles_by_name(m).items() if r is Role.MATRIX]
    assert list(H) == names
    for i in range(m.cfg.num_layers):
        hq, hk, hv = (H[f"blocks.{i}.attn.{w}"] for w in "qkv")
        assert torch.equal(hq, hk) and torch.equal(hq, hv)
    # By hand: the input of block 0's q is rms(mix0 * x0 + mix1 * x0) * ln_factor.
    with torch.no_grad():
        b0 = m.blocks[0]
        Hh = torch.zeros_like(H["blocks.0.attn.q"])
        for idx in batches:
            x0 = m.embed(idx)
            mix = b0.resid_mix
            X = (rms_norm(mix[0] * x0 + mix[1] * x0) * b0.ln_factor).reshape(-1, m.cfg.model_dim)
            Hh += X.T @ X
        Hh /= sum(b.size(0) for b in batches)
    torch.testing.assert_close(H["blocks.0.attn.q"], Hh, rtol=1e-5, atol=1e-5)
    for name, h in H.items():
        assert h.dtype == torch.float32 and h.shape[0] == h.shape[1]
        assert torch.equal(h, h.T), name
        assert float(torch.linalg.eigvalsh(h.double()).min()) > -1e-4 * float(h.diagonal().max()), name
    # `down` sees the MLP hidden width, `o` the attention width.
    assert H["blocks.0.mlp.down"].shape == (m.cfg.mlp_hidden,) * 2


def test_hessians_refuse_uncaptured_matrices():
    m = _tiny_model(3).double()
    idx = torch.randint(0, m.cfg.vocab_size, (1, 16))
    H = collect_hessians(m, [idx])  # an fp64 model runs in fp64, so every weight reaches F.linear uncast
    assert all(h.dtype == torch.float32 for h in H.values())
    # Under autocast the attention output is bf16, so `o.to(bf16)` is a copy the recorder cannot match.
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(RuntimeError, match="no input seen"):
        collect_hessians(_tiny_model(3), [idx])


@pytest.mark.parametrize("tied", [True, False])
def test_head_hessian_is_the_normed_hidden_state(tied):
    cfg = replace(tiny().model, tie_embeddings=tied)
    torch.manual_seed(4)
    m = GPT(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape) * 0.05)
    head = "tok_emb" if tied else "head"
    assert m.output_weight() is dict(m.named_parameters())[head]
    g = torch.Generator().manual_seed(6)
    batches = [torch.randint(0, cfg.vocab_size, (2, 24), generator=g) for _ in range(2)]
    assert head not in collect_hessians(m, batches)  # matrices only unless asked
    H = collect_hessians(m, batches, head=True)
    # No other table gets one: the lookups (token, bigram, value embedding) are not matmuls.
    tables = {n for n, r in roles_by_name(m).items() if r in (Role.EMBED, Role.HEAD)}
    assert set(H) & tables == {head}
    with torch.no_grad():
        X = torch.cat([m.forward_hidden(b).reshape(-1, cfg.model_dim) for b in batches])
        want = X.T @ X / sum(b.size(0) for b in batches)
    torch.testing.assert_close(H[head], want, rtol=1e-5, atol=1e-5)


def test_head_gptq_lowers_the_head_output_error_and_round_trips(tmp_path):
    m = _tiny_model(7)
    g = torch.Generator().manual_seed(8)
    batches = [torch.randint(0, m.cfg.vocab_size, (4, 32), generator=g) for _ in range(2)]
    H = collect_hessians(m, batches, head=True)
    qc = replace(tiny().quant, method="gptq", head_gptq=True, head_damp=0.01)
    t = schemes.quantize_model(m, qc, H)
    assert t["tok_emb"][0] == f"gptq_int{qc.embed_bits}"
    assert t["bigram.table"][0] == f"pctl_int{qc.embed_bits}"  # lookups only: the original RTN
    off = schemes.quantize_model(m, replace(qc, head_gptq=False), H)
    assert off["tok_emb"][0] == f"pctl_int{qc.embed_bits}"
    assert all(torch.equal(t[n][1], off[n][1]) for n in t if n != "tok_emb")  # nothing else changes
    W, Hh = m.tok_emb.detach().double(), H["tok_emb"].double()

    def out_err(e) -> float:
        d = W - dequantize(e[1], e[2]).double()
        return float(torch.einsum("rc,cd,rd->", d, Hh, d))

    assert out_err(t["tok_emb"]) < 0.8 * out_err(off["tok_emb"])
    path = tmp_path / "h.pgolf"
    artifact.save_model_artifact(path, m, t, qc)
    back = dict(artifact.load_artifact(path, torch.device("cpu")).named_parameters())
    assert torch.equal(back["tok_emb"].detach(), dequantize(t["tok_emb"][1], t["tok_emb"][2]))


def test_lzma_payload_whose_declared_dictionary_is_rounded_up_decodes():
    """xz declares the dictionary as 2^n or 3 * 2^(n-1): a 2^22 + 1 byte payload declares 6 MiB, more than
    its size plus 1 MiB (an H100 record artifact of 27 MB raw hit exactly this as "Memory usage limit
    exceeded"). The decoder's memory limit must allow the rounded size."""
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 4, 2**22 + 1, dtype=np.uint8).tobytes()
    blob = codecs.compress(raw, "lzma")
    assert codecs.decompress(blob, "lzma", len(raw)) == raw
