"""Building blocks of the GPT of docs/DESIGN.md#model (eager, readable; no fused kernels here).

Shape legend (used in comments and suffixes throughout `pgolf.model`):
    B  batch (sequences / windows)         T  sequence length
    D  model_dim                           H  query heads        Hkv  key/value heads
    Dh head_dim = D / H                    G  query heads per kv head = H / Hkv
    R  rotary dims per head (<= Dh)        F  MLP hidden width
    V  vocab size                          Vb bigram buckets     Db bigram dim     Dv value-embedding dim

Every parameter is created here as one tensor per matrix/vector and tagged with its Role at creation
(`roles.tag`); values are filled in by `GPT.init_weights`, not by these constructors.

Weights are kept in whatever dtype the trainer chose (fp32 masters); each use casts to the activation
dtype so a bf16 residual stream never gets promoted back to fp32 by a parameter.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pgolf.config import ModelConfig
from pgolf.model.attention import AttnImpl, DocSegments, KVSlot, sdpa_attention
from pgolf.model.lora import LoraAdapters
from pgolf.model.roles import Role, tag


def rms_norm(x: Tensor) -> Tensor:
    """Functional RMSNorm over the last dim, no learnable scale, PyTorch's default eps (docs/DESIGN.md#model-forward)."""
    return F.rms_norm(x, (x.size(-1),))


def fake_quant_ste(w: Tensor, bits: int) -> Tensor:
    """Straight-through fake quantization of a matrix to a symmetric per-row int grid (late QAT).

    Forward: round(w / s) * s with s = max|row| / (2^(bits-1) - 1), clamped to the grid; backward:
    identity (the gradient w.r.t. the quantized weight flows to w unchanged). docs/DESIGN.md#train-late-qat explains why
    the original's QAT never ran; this one is an explicit module attribute, so torch.compile re-traces
    when it is switched on.
    """
    qmax = 2 ** (bits - 1) - 1
    s = (w.detach().abs().amax(dim=-1, keepdim=True) / qmax).clamp_min(1e-12)  # (rows, 1)
    q = torch.clamp(torch.round(w.detach() / s), -qmax, qmax) * s
    return w + (q - w).detach()


def _adapt(y: Tensor, lora: LoraAdapters | None, layer: int, target: str, x: Tensor) -> Tensor:
    """y + the adapter's delta for (layer, target) of input x, or y itself without one."""
    d = lora.delta(layer, target, x) if lora is not None else None
    return y if d is None else y + d.to(y.dtype)


def _param(*shape: int, role: Role) -> nn.Parameter:
    # Values are written by GPT.init_weights; torch.empty keeps construction cheap and RNG-free.
    return tag(nn.Parameter(torch.empty(*shape)), role)


# --------------------------------------------------------------------------------------------------
# Rotary position embedding
# --------------------------------------------------------------------------------------------------


class Rotary(nn.Module):
    """Partial RoPE tables with the NTK base rescale of PR #1019 (docs/DESIGN.md#model-attention step 3).

    Only the first R dims of each head rotate (partial RoPE, PR #315); R = rope_dims, or Dh when 0.
    When the sequence is longer than ref_len > 0 the base is rescaled NTK-style:
    base' = base * (T / ref_len) ** (R / (R - 2)); at T = 2048, ref 1024, R = 16 this is ~22,082.
    No parameters and no cached state (the tables are T x R/2, recomputed per forward).
    """

    def __init__(self, head_dim: int, rope_dims: int, base: float, ref_len: int) -> None:
        super().__init__()
        self.dims = rope_dims if rope_dims > 0 else head_dim
        if self.dims % 2 or self.dims > head_dim:
            raise ValueError(f"rotary dims must be even and <= head_dim={head_dim}, got {self.dims}")
        if ref_len > 0 and self.dims <= 2:
            # The exponent R / (R - 2) is undefined at R = 2.
            raise ValueError("the NTK rescale (rope_ref_len > 0) needs more than 2 rotary dims")
        self.base = float(base)
        self.ref_len = int(ref_len)

    def effective_base(self, seq_len: int) -> float:
        if self.ref_len > 0 and seq_len > self.ref_len:
            return self.base * (seq_len / self.ref_len) ** (self.dims / (self.dims - 2))
        return self.base

    def forward(self, seq_len: int, device: torch.device, dtype: torch.dtype,
                base_len: int | None = None) -> tuple[Tensor, Tensor]:
        """cos, sin tables of shape (T, R/2) in `dtype` (computed in fp32, or fp64 for fp64 models) for
        positions 0 .. T-1; the NTK base is that of length base_len (default T = seq_len)."""
        work = torch.float64 if dtype == torch.float64 else torch.float32
        base = self.effective_base(seq_len if base_len is None else base_len)
        inv_freq = 1.0 / base ** (torch.arange(0, self.dims, 2, device=device, dtype=work) / self.dims)  # (R/2,)
        freqs = torch.outer(torch.arange(seq_len, device=device, dtype=work), inv_freq)  # (T, R/2)
        return freqs.cos().to(dtype), freqs.sin().to(dtype)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the first R dims of x (B, T, H, Dh) in the split-halves layout; the rest pass through.

    With u = dims [0, R/2) and w = dims [R/2, R): (u, w) -> (u cos + w sin, w cos - u sin) (docs/DESIGN.md#model-attention).
    """
    half = cos.size(-1)
    rot = 2 * half
    cos = cos.to(x.dtype)[None, :, None, :]  # (1, T, 1, R/2); cast so the tables never promote x
    sin = sin.to(x.dtype)[None, :, None, :]
    u, w, rest = x[..., :half], x[..., half:rot], x[..., rot:]  # (B, T, H, R/2) x2, (B, T, H, Dh-R)
    return torch.cat((u * cos + w * sin, w * cos - u * sin, rest), dim=-1)


# --------------------------------------------------------------------------------------------------
# Attention, MLP, Block
# --------------------------------------------------------------------------------------------------


def xsa_project(y: Tensor, v: Tensor) -> Tensor:
    """Exclusive self-attention (arXiv 2603.09078; PR #265/#478): drop y's component along own value.

    y (B, T, H, Dh) attention output, v (B, T, Hkv, Dh) the values (incl. value embedding).
    y_{t,h} <- y_{t,h} - (y_{t,h} . v_hat) v_hat with v_hat = v_{t,g(h)} / ||v_{t,g(h)}||.
    """
    b, t, h, dh = y.shape
    hkv = v.size(2)
    y_g = y.reshape(b, t, hkv, h // hkv, dh)  # (B, T, Hkv, G, Dh): query heads grouped by their kv head
    v_hat = F.normalize(v, dim=-1).unsqueeze(3)  # (B, T, Hkv, 1, Dh)
    y_g = y_g - (y_g * v_hat).sum(-1, keepdim=True) * v_hat
    return y_g.reshape(b, t, h, dh)


class CausalSelfAttention(nn.Module):
    """GQA attention with QK-norm, partial RoPE, per-head query gain, optional VE add and XSA (docs/DESIGN.md#model-attention)."""

    def __init__(self, cfg: ModelConfig, use_xsa: bool, attn_impl: AttnImpl | None = None) -> None:
        super().__init__()
        d, kv = cfg.model_dim, cfg.kv_dim
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.qk_norm = cfg.qk_norm
        self.use_xsa = use_xsa
        self.attn_impl: AttnImpl = attn_impl if attn_impl is not None else sdpa_attention
        self.qat_bits = 0  # > 0: late QAT, matrices fake-quantized in the forward (set by GPT.set_qat)
        self.q = _param(d, d, role=Role.MATRIX)  # (H*Dh, D)
        self.k = _param(kv, d, role=Role.MATRIX)  # (Hkv*Dh, D)
        self.v = _param(kv, d, role=Role.MATRIX)  # (Hkv*Dh, D)
        self.o = _param(d, d, role=Role.MATRIX)  # (D, H*Dh)
        # Per-head query gain (naive baseline); with QK-norm it sets the temperature (init 5.0: PR #1217 sweep).
        self.q_gain = _param(cfg.num_heads, role=Role.SCALAR)  # (H,)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, ve: Tensor | None = None,
                kv: KVSlot | None = None, segments: DocSegments | None = None,
                lora: LoraAdapters | None = None, layer: int = 0) -> Tensor:
        """x (B, T, D) already normed/scaled; cos/sin (T, R/2); ve (B, T, Hkv*Dh) or None -> (B, T, D).

        kv: incremental decoding (`KVSlot`): x holds the next positions pos .. pos+T-1 only, their keys and
        values are written into the cache and the queries attend to cache positions 0 .. pos+T-1.
        segments: document isolation (attention within each query's document only); with kv, the
        segments of every position 0 .. pos+T-1. lora: per-row adapters of this layer's q/k/v (pgolf.model.lora).
        """
        b, t, _ = x.shape
        q = _adapt(F.linear(x, self._w(self.q, x.dtype)), lora, layer, "q", x)
        k = _adapt(F.linear(x, self._w(self.k, x.dtype)), lora, layer, "k", x)
        q = q.view(b, t, self.num_heads, self.head_dim)  # (B, T, H, Dh)
        k = k.view(b, t, self.num_kv_heads, self.head_dim)  # (B, T, Hkv, Dh)
        v = _adapt(F.linear(x, self._w(self.v, x.dtype)), lora, layer, "v", x)  # (B, T, Hkv*Dh)
        if ve is not None:
            v = v + ve.to(v.dtype)  # value embedding (PR #374), added before the head reshape
        v = v.view(b, t, self.num_kv_heads, self.head_dim)  # (B, T, Hkv, Dh)
        if self.qk_norm:
            q, k = rms_norm(q), rms_norm(k)  # QK-norm over Dh, no learnable scale (docs/DESIGN.md#model-attention step 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q = q * self.q_gain.to(q.dtype)[None, None, :, None]  # gain on q only, none on k
        # Under autocast rms_norm runs in fp32 while the linears give bf16; a kernel such as FA3 needs one
        # dtype, so q and k go back to the projections' compute dtype (a no-op without autocast).
        q, k = q.to(v.dtype), k.to(v.dtype)
        if kv is not None:
            y = kv.attend(q, k, v, segments)  # (B, T, H, Dh)
        else:
            y = self.attn_impl(q, k, v) if segments is None else self.attn_impl(q, k, v, segments)
        if self.use_xsa:
            y = xsa_project(y, v)
        return F.linear(y.reshape(b, t, -1), self._w(self.o, y.dtype))  # (B, T, D)

    def _w(self, w: Tensor, dtype: torch.dtype) -> Tensor:
        return (fake_quant_ste(w, self.qat_bits) if self.qat_bits else w).to(dtype)


class MLP(nn.Module):
    """D -> F -> D, activation LeakyReLU(slope)^2 (PR #493/#549) or ReLU^2 (naive baseline). No biases."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.activation = cfg.mlp_activation
        self.slope = cfg.leaky_slope
        self.qat_bits = 0  # > 0: late QAT, matrices fake-quantized in the forward (set by GPT.set_qat)
        self.up = _param(cfg.mlp_hidden, cfg.model_dim, role=Role.MATRIX)  # (F, D)
        self.down = _param(cfg.model_dim, cfg.mlp_hidden, role=Role.MATRIX)  # (D, F)

    def forward(self, x: Tensor) -> Tensor:
        h = F.linear(x, self._w(self.up, x.dtype))  # (B, T, F)
        h = F.leaky_relu(h, self.slope) if self.activation == "leaky_relu2" else F.relu(h)
        return F.linear(h.square(), self._w(self.down, h.dtype))  # (B, T, D)

    def _w(self, w: Tensor, dtype: torch.dtype) -> Tensor:
        return (fake_quant_ste(w, self.qat_bits) if self.qat_bits else w).to(dtype)


class Block(nn.Module):
    """One transformer layer (docs/DESIGN.md#model-forward step 3).

    x_in  = m0 * x + m1 * x0                       (resid_mix, as in PR #1019)
    x_mid = x_in + s_attn * Attn(rms(x_in) * f_l)
    x_out = x_mid + s_mlp * MLP(rms(x_mid) * f_l)  with f_l = 1/sqrt(l+1) when ln_scale (PR #1019)
    """

    def __init__(self, cfg: ModelConfig, layer: int, attn_impl: AttnImpl | None = None) -> None:
        super().__init__()
        self.layer = layer
        self.ln_factor = 1.0 / math.sqrt(layer + 1) if cfg.ln_scale else 1.0
        use_xsa = layer >= cfg.num_layers - cfg.xsa_last_n
        self.attn = CausalSelfAttention(cfg, use_xsa=use_xsa, attn_impl=attn_impl)
        self.mlp = MLP(cfg)
        self.attn_scale = _param(cfg.model_dim, role=Role.SCALAR)  # (D,)
        self.mlp_scale = _param(cfg.model_dim, role=Role.SCALAR)  # (D,)
        self.resid_mix = _param(2, cfg.model_dim, role=Role.SCALAR) if cfg.resid_mix else None  # (2, D)

    def forward(self, x: Tensor, x0: Tensor, cos: Tensor, sin: Tensor, ve: Tensor | None = None,
                kv: KVSlot | None = None, segments: DocSegments | None = None,
                lora: LoraAdapters | None = None) -> Tensor:
        """x, x0 (B, T, D); cos/sin (T, R/2); ve (B, T, Hkv*Dh) or None; kv, segments, lora: see
        CausalSelfAttention (lora also adapts this layer's attention output "o" and MLP) -> (B, T, D)."""
        if self.resid_mix is not None:
            mix = self.resid_mix.to(x.dtype)
            x = mix[0] * x + mix[1] * x0
        h = rms_norm(x) * self.ln_factor
        a = _adapt(self.attn(h, cos, sin, ve, kv, segments, lora, self.layer), lora, self.layer, "o", h)
        x = x + self.attn_scale.to(x.dtype) * a
        h = rms_norm(x) * self.ln_factor
        m = _adapt(self.mlp(h), lora, self.layer, "mlp", h)
        return x + self.mlp_scale.to(x.dtype) * m


# --------------------------------------------------------------------------------------------------
# Input-side extras: BigramHash, value embeddings, SmearGate
# --------------------------------------------------------------------------------------------------

_HASH_CUR = 36313
_HASH_PREV = 27191


def _wrap_int32(x: Tensor) -> Tensor:
    """Reduce int64 values to what two's-complement int32 arithmetic would hold (still stored as int64)."""
    return (x + 2**31) % 2**32 - 2**31


def bigram_bucket_ids(idx: Tensor, buckets: int, bos_id: int | None = None) -> Tensor:
    """BigramHash bucket per position (docs/DESIGN.md#model-bigram): idx (..., T) integer -> (..., T) int64 in [0, buckets).

    bucket_t = ((36313 * x_t) XOR (27191 * x_{t-1})) mod (buckets - 1) for t >= 1, bucket_0 = buckets - 1.
    The spec (docs/DESIGN.md#model-bigram) says the products are 32-bit ints. For vocab <= 1024 nothing overflows, but 36313 * x exceeds
    2^31 - 1 from x = 59,139 on (vocab up to 65,536 is allowed), so we compute in int64 and wrap each
    product to signed int32 explicitly (int32 overflow is not something to rely on); XOR of the
    sign-extended values equals the sign extension of the int32 XOR; `%` is floor-mod (Python / torch
    remainder semantics), so a negative XOR still lands in [0, buckets - 1).
    """
    x = idx.to(torch.int64)
    mod = buckets - 1
    cur = _wrap_int32(_HASH_CUR * x[..., 1:])
    prev = _wrap_int32(_HASH_PREV * x[..., :-1])
    h = torch.bitwise_xor(cur, prev) % mod  # (..., T-1)
    if bos_id is not None:  # document isolation: a BOS has no previous token either
        h = torch.where(x[..., 1:] == bos_id, mod, h)
    first = torch.full_like(x[..., :1], mod)  # reserved bucket for position 0 of every sequence
    return torch.cat((first, h), dim=-1)


class BigramHash(nn.Module):
    """Hashed (previous, current) token-pair embedding added to the token embedding (PR #162; 3072x112 in
    PR #1019): scale * proj(table[bucket]). Only input tokens are hashed, so it is causal."""

    def __init__(self, buckets: int, dim: int, model_dim: int) -> None:
        super().__init__()
        self.buckets = buckets
        self.table = _param(buckets, dim, role=Role.EMBED)  # (Vb, Db)
        self.proj = _param(model_dim, dim, role=Role.PROJ)  # (D, Db)
        self.scale = _param(1, role=Role.SCALAR)  # (1,)

    def forward(self, idx: Tensor, bos_id: int | None = None) -> Tensor:
        """idx (B, T) -> (B, T, D); bos_id (document isolation): a BOS gets the reserved bucket."""
        e = F.embedding(bigram_bucket_ids(idx, self.buckets, bos_id), self.table)  # (B, T, Db)
        return self.scale.to(e.dtype) * F.linear(e, self.proj.to(e.dtype))


class ValueEmbedding(nn.Module):
    """Shared value embedding (PR #374): scale * proj(table[x]) -> (B, T, Hkv*Dh), added to v on the
    chosen layers, each multiplying it by its own learnable scalar (layer_scales[j] for ve_layers[j])."""

    def __init__(self, vocab_size: int, dim: int, kv_dim: int, num_layers_used: int) -> None:
        super().__init__()
        self.table = _param(vocab_size, dim, role=Role.EMBED)  # (V, Dv)
        self.proj = _param(kv_dim, dim, role=Role.PROJ)  # (Hkv*Dh, Dv)
        self.scale = _param(1, role=Role.SCALAR)  # (1,) shared
        self.layer_scales = _param(num_layers_used, role=Role.SCALAR)  # (n_ve_layers,)

    def forward(self, idx: Tensor) -> Tensor:
        """idx (B, T) -> shared value embedding (B, T, Hkv*Dh), before the per-layer scale."""
        e = F.embedding(idx, self.table)  # (B, T, Dv)
        return self.scale.to(e.dtype) * F.linear(e, self.proj.to(e.dtype))


class SmearGate(nn.Module):
    """h_t = (1 - g) e_t + g e_{t-1}, e_{-1} = 0, g = sigmoid(w) per channel (as in PR #1019; docs/DESIGN.md#model-forward).

    The first position of every row sees zeros, so nothing leaks across sequences/windows.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.w = _param(dim, role=Role.GATE)  # (D,)

    def forward(self, e: Tensor, is_bos: Tensor | None = None) -> Tensor:
        """e (B, T, D) -> (B, T, D); is_bos (B, T) bool (document isolation): a BOS mixes in nothing."""
        g = torch.sigmoid(self.w.to(e.dtype))  # (D,)
        prev = F.pad(e[:, :-1], (0, 0, 1, 0))  # (B, T, D): e shifted right by one, zeros at t = 0
        if is_bos is not None:
            prev = prev.masked_fill(is_bos[..., None], 0)
        return (1 - g) * e + g * prev
