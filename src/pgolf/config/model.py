"""The model section of the config tree: the GPT's shape and which V20 components are on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pgolf.config.base import _require


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

    def __post_init__(self) -> None:
        p = "model."
        _require(2 <= self.vocab_size <= 65536, p + "vocab_size", f"must be in [2, 65536] (uint16 shards), got {self.vocab_size}")
        _require(self.num_layers >= 1, p + "num_layers", f"must be >= 1, got {self.num_layers}")
        _require(self.num_heads >= 1 and self.num_kv_heads >= 1, p + "num_heads", "head counts must be >= 1")
        _require(self.model_dim % self.num_heads == 0, p + "model_dim",
                 f"{self.model_dim} is not divisible by model.num_heads={self.num_heads}")
        _require(self.num_heads % self.num_kv_heads == 0, p + "num_kv_heads",
                 f"model.num_heads={self.num_heads} is not divisible by {self.num_kv_heads}")
        _require(self.head_dim % 2 == 0, p + "model_dim", f"head_dim={self.head_dim} must be even")
        _require(0 <= self.rope_dims <= self.head_dim and self.rope_dims % 2 == 0, p + "rope_dims",
                 f"must be even and in [0, head_dim={self.head_dim}], got {self.rope_dims}")
        _require(self.mlp_mult > 0, p + "mlp_mult", f"must be > 0, got {self.mlp_mult}")
        _require(0 <= self.xsa_last_n <= self.num_layers, p + "xsa_last_n",
                 f"must be in [0, model.num_layers={self.num_layers}], got {self.xsa_last_n}")
        _require(self.bigram_buckets == 0 or self.bigram_buckets >= 2, p + "bigram_buckets",
                 f"must be 0 (off) or >= 2, got {self.bigram_buckets}")
        _require(self.bigram_buckets == 0 or self.bigram_dim >= 1, p + "bigram_dim", "must be >= 1")
        _require(all(0 <= i < self.num_layers for i in self.ve_layers), p + "ve_layers",
                 f"layer indices must be in [0, {self.num_layers}), got {self.ve_layers}")
        _require(len(set(self.ve_layers)) == len(self.ve_layers), p + "ve_layers", "duplicate layer index")
        _require(not self.ve_layers or self.ve_dim >= 1, p + "ve_dim", "must be >= 1 when ve_layers is set")
        _require(self.logit_softcap >= 0, p + "logit_softcap", "must be >= 0")
        _require(self.rope_base > 0, p + "rope_base", "must be > 0")
        _require(self.rope_ref_len >= 0, p + "rope_ref_len", "must be >= 0")
        _require(0 <= self.bos_id < self.vocab_size, p + "bos_id", f"must be in [0, model.vocab_size), got {self.bos_id}")

    @property
    def head_dim(self) -> int:
        return self.model_dim // self.num_heads

    @property
    def kv_dim(self) -> int:
        return self.head_dim * self.num_kv_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.mlp_mult * self.model_dim)

