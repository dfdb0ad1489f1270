"""The model section of the config tree: the GPT's shape and which V20 components are on."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from pgolf.config.base import _check_fields, _require

# Size limits of a model config (docs/DESIGN.md#size-rule), derived from the 16,000,000-byte cap.
CAP_BYTES = 16_000_000
"""The challenge's cap on code + compressed model, decimal bytes."""
MIN_BITS_PER_PARAM = math.log2(3)
"""The densest storage pgolf has: the int2 grid {-1, 0, 1} (the coarsest scheme the artifact reader
accepts; the writer's coarsest is int5) holds log2(3) = 1.585 bits per weight that uses the grid."""
MAX_PARAMS = int(CAP_BYTES * 8 / MIN_BITS_PER_PARAM)
"""80,759,008 parameters: the most that 16,000,000 bytes can hold at log2(3) bits each. pgolf's own payloads
measure 3.6-5.5 bits per parameter (fresh tiny/cpu models; the record run 4.7). With model.size_limits
(the default) a config above it is refused wherever it comes from; an artifact that opts out is held to
the same rule with its own payload size in place of the cap (pgolf.quant.artifact)."""
MAX_LAYERS = 256
"""Always enforced: 23x the record's 11 layers; each layer is 3 modules and up to 8 parameters, so a
model's module tree stays in the low thousands and any config builds in well under a second."""
MAX_WIDTH = 16_384
"""Always enforced on model_dim, bigram_dim and ve_dim (one D x D fp32 matrix at this width is 1 GiB;
under model.size_limits the parameter bound keeps every tensor far smaller)."""
MAX_MLP_HIDDEN = 4 * MAX_WIDTH
"""Always enforced on the MLP width int(mlp_mult * model_dim)."""
MAX_TABLE_ROWS = 2**24
"""Always enforced on bigram_buckets (the record uses 3,072; 2^24 is 16x every token pair of a 1,024 vocab)."""


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The GPT of docs/DESIGN.md#model. Every component can be switched off for ablations."""

    vocab_size: int = 1024
    """Model vocabulary (must cover the tokenizer's ids; shards are refused if a token is >= it)."""
    num_layers: int = 11
    model_dim: int = 512
    num_heads: int = 8
    num_kv_heads: int = 4
    """Grouped-query attention: each KV head serves num_heads / num_kv_heads query heads."""
    mlp_mult: float = 3.0
    """MLP hidden width = mlp_mult * model_dim."""
    mlp_activation: Literal["leaky_relu2", "relu2"] = "leaky_relu2"
    """leaky_relu2 = LeakyReLU(leaky_slope)^2 (PR #493/#549); relu2 = the naive baseline's ReLU^2."""
    leaky_slope: float = 0.5
    tie_embeddings: bool = True
    logit_softcap: float = 30.0
    """logits = c * tanh(logits / c); 0 disables."""
    rope_base: float = 10000.0
    rope_dims: int = 16
    """Rotary dims per head (partial RoPE); 0 means all head dims."""
    rope_ref_len: int = 1024
    """NTK rescale reference length: beyond it base' = base * (T/ref)^(d/(d-2)); 0 disables."""
    qk_norm: bool = True
    qk_gain_init: float = 5.0
    """Initial value of the learnable per-head query gain (1.5 in PR #1019, 5.0 in the V20 lineage)."""
    ln_scale: bool = True
    """Scale block inputs by 1/sqrt(layer + 1) after RMSNorm."""
    xsa_last_n: int = 11
    """Exclusive self-attention on the last n layers (0 = off)."""
    bigram_buckets: int = 3072
    """BigramHash table rows (the last row is reserved for position 0); 0 = off."""
    bigram_dim: int = 112
    smear_gate: bool = True
    ve_dim: int = 128
    ve_layers: tuple[int, ...] = (9, 10)
    """Layers that receive value embeddings; empty = off."""
    unet_skips: bool = True
    resid_mix: bool = True
    tied_embed_init_std: float = 0.005
    ortho_init: bool = True
    doc_isolation: bool = False
    """Attention only within a document (a token sees earlier positions of its own document; documents
    start at bos_id), and SmearGate / BigramHash do not mix a BOS with the token before it
    (docs/DESIGN.md#doc-isolated-attention). Off = the V20 stack as published."""
    bos_id: int = 1
    """The token that starts every document (the challenge's SentencePiece bos_id)."""
    size_limits: bool = True
    """Refuse a model above MAX_PARAMS parameters (what the 16,000,000-byte cap can hold; docs/DESIGN.md#size-rule).
    False = research beyond the cap: the per-dimension bounds (MAX_LAYERS, MAX_WIDTH, ...) still hold, and
    an artifact may then declare at most as many parameters as its own payload could hold."""

    def __post_init__(self) -> None:
        p = "model."
        _check_fields(self, p)
        _require(2 <= self.vocab_size <= 65536, p + "vocab_size", f"must be in [2, 65536] (uint16 shards), got {self.vocab_size}")
        _require(1 <= self.num_layers <= MAX_LAYERS, p + "num_layers", f"must be in [1, {MAX_LAYERS}], got {self.num_layers}")
        _require(2 <= self.model_dim <= MAX_WIDTH, p + "model_dim", f"must be in [2, {MAX_WIDTH}], got {self.model_dim}")
        _require(self.num_heads >= 1, p + "num_heads", f"must be >= 1, got {self.num_heads}")
        _require(self.num_kv_heads >= 1, p + "num_kv_heads", f"must be >= 1, got {self.num_kv_heads}")
        _require(self.model_dim % self.num_heads == 0, p + "model_dim",
                 f"{self.model_dim} is not divisible by model.num_heads={self.num_heads}")
        _require(self.num_heads % self.num_kv_heads == 0, p + "num_kv_heads",
                 f"model.num_heads={self.num_heads} is not divisible by {self.num_kv_heads}")
        _require(self.head_dim % 2 == 0, p + "model_dim", f"head_dim={self.head_dim} must be even")
        _require(0 <= self.rope_dims <= self.head_dim and self.rope_dims % 2 == 0, p + "rope_dims",
                 f"must be even and in [0, head_dim={self.head_dim}], got {self.rope_dims}")
        _require(self.mlp_mult > 0, p + "mlp_mult", f"must be > 0, got {self.mlp_mult}")
        _require(1 <= self.mlp_mult * self.model_dim < MAX_MLP_HIDDEN + 1, p + "mlp_mult",
                 f"the MLP width int(mlp_mult * model_dim) must be in [1, {MAX_MLP_HIDDEN}], got "
                 f"{self.mlp_mult} * {self.model_dim}")
        _require(0.0 <= self.leaky_slope <= 1.0, p + "leaky_slope", f"must be in [0, 1], got {self.leaky_slope}")
        _require(0 <= self.xsa_last_n <= self.num_layers, p + "xsa_last_n",
                 f"must be in [0, model.num_layers={self.num_layers}], got {self.xsa_last_n}")
        _require(self.bigram_buckets == 0 or 2 <= self.bigram_buckets <= MAX_TABLE_ROWS, p + "bigram_buckets",
                 f"must be 0 (off) or in [2, {MAX_TABLE_ROWS}], got {self.bigram_buckets}")
        _require(self.bigram_buckets == 0 or 1 <= self.bigram_dim <= MAX_WIDTH, p + "bigram_dim",
                 f"must be in [1, {MAX_WIDTH}], got {self.bigram_dim}")
        _require(all(0 <= i < self.num_layers for i in self.ve_layers), p + "ve_layers",
                 f"layer indices must be in [0, {self.num_layers}), got {self.ve_layers}")
        _require(len(set(self.ve_layers)) == len(self.ve_layers), p + "ve_layers", "duplicate layer index")
        _require(not self.ve_layers or 1 <= self.ve_dim <= MAX_WIDTH, p + "ve_dim",
                 f"must be in [1, {MAX_WIDTH}] when ve_layers is set, got {self.ve_dim}")
        _require(0 <= self.logit_softcap <= 1e4, p + "logit_softcap",
                 f"must be in [0, 1e4] (0 = off; a larger cap never binds on fp32 logits), got {self.logit_softcap}")
        _require(self.rope_base >= 1, p + "rope_base",
                 f"must be >= 1 (below it the rotary frequencies exceed 1 radian per position), got {self.rope_base}")
        _require(self.rope_ref_len >= 0, p + "rope_ref_len", "must be >= 0")
        _require(self.rope_ref_len == 0 or (self.rope_dims or self.head_dim) > 2, p + "rope_dims",
                 f"{self.rope_dims or self.head_dim} rotary dims, but the NTK rescale ({p}rope_ref_len="
                 f"{self.rope_ref_len} > 0) needs more than 2 (set {p}rope_ref_len=0 to turn it off)")
        _require(self.tied_embed_init_std >= 0, p + "tied_embed_init_std", "must be >= 0")
        _require(0 <= self.bos_id < self.vocab_size, p + "bos_id", f"must be in [0, model.vocab_size), got {self.bos_id}")
        _require(not self.size_limits or self.num_params <= MAX_PARAMS, p + "size_limits",
                 f"{self.num_params:,} parameters exceed the {MAX_PARAMS:,} that {CAP_BYTES:,} bytes can hold "
                 "at log2(3) bits each (set model.size_limits=false for research beyond the cap)")

    @property
    def head_dim(self) -> int:
        return self.model_dim // self.num_heads

    @property
    def kv_dim(self) -> int:
        return self.head_dim * self.num_kv_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.mlp_mult * self.model_dim)

    @property
    def num_params(self) -> int:
        """Parameters of the GPT this config describes, by arithmetic (no module is built). Equal to the
        sum over pgolf.model.build.parameter_shapes and to GPT(cfg).num_params()
        (tests/hardening/test_artifact_shapes.py)."""
        d, kv, f, n_layers = self.model_dim, self.kv_dim, self.mlp_hidden, self.num_layers
        layer = 2 * d * d + 2 * kv * d + 2 * f * d + 2 * d + self.num_heads + (2 * d if self.resid_mix else 0)
        n = self.vocab_size * d * (1 if self.tie_embeddings else 2) + n_layers * layer
        n += (self.bigram_buckets * self.bigram_dim + d * self.bigram_dim + 1) if self.bigram_buckets else 0
        n += d if self.smear_gate else 0
        n += (self.vocab_size * self.ve_dim + kv * self.ve_dim + 1 + len(self.ve_layers)) if self.ve_layers else 0
        n += (n_layers // 2) * d if self.unet_skips else 0
        return n

