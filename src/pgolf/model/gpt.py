"""The GPT of docs/DESIGN.md#model (the PR #1019 backbone used by the V20 stack).

Shape legend: see `pgolf.model.layers` (B batch, T time, D model_dim, V vocab, H/Hkv heads, Dh head_dim).

Forward (docs/DESIGN.md#model-forward):
    e  = rms(tok_emb[x] + BigramHash(x));  x0 = SmearGate(e)
    encoder blocks 0 .. L//2-1 push their outputs; decoder block i first adds skip_w[i] * pop() (LIFO)
    h  = rms(x);  logits = c * tanh(h @ W_head^T / c), W_head = tok_emb when tied

Weights are one 2-D parameter per matrix per layer (q, k, v, o, up, down) instead of PR #1019's 3-D
banks; the count is identical (25,952,256 matrix parameters at the record shape). Every parameter is
tagged with one Role where it is created (layers.py and below).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pgolf.config import ModelConfig
from pgolf.model.attention import AttnImpl, DocSegments, KVSlot
from pgolf.model.layers import BigramHash, Block, Rotary, SmearGate, ValueEmbedding, rms_norm
from pgolf.model.lora import HEAD, LoraAdapters
from pgolf.model.roles import Role, count_by_role, tag

# Init constants of PR #1019 (docs/DESIGN.md#model-init).
_BIGRAM_SCALE_INIT = 0.05
_VE_TABLE_STD = 0.01
_VE_SCALE_INIT = 0.1


class GPT(nn.Module):
    """GPT(cfg) -> forward(idx (B, T)) = softcapped logits (B, T, V), at least fp32.

    attn_impl: optional causal attention kernel (see layers.AttnImpl), e.g. FlashAttention-3 injected
    by the trainer; defaults to torch SDPA so the model never imports a CUDA-only package.
    Parameters are initialized in the constructor from torch's global RNG; call
    `init_weights(generator)` to re-initialize from an explicit generator.
    """

    def __init__(self, cfg: ModelConfig, attn_impl: AttnImpl | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.model_dim
        self.tok_emb = tag(nn.Parameter(torch.empty(cfg.vocab_size, d)), Role.EMBED)  # (V, D)
        self.bigram = BigramHash(cfg.bigram_buckets, cfg.bigram_dim, d) if cfg.bigram_buckets > 0 else None
        self.smear = SmearGate(d) if cfg.smear_gate else None
        # ve_slot[l] = index into ValueEmbedding.layer_scales for layer l, or -1 when l gets no VE.
        self.ve_slot = tuple(cfg.ve_layers.index(layer) if layer in cfg.ve_layers else -1
                             for layer in range(cfg.num_layers))
        self.ve = (ValueEmbedding(cfg.vocab_size, cfg.ve_dim, cfg.kv_dim, len(cfg.ve_layers))
                   if cfg.ve_layers else None)
        self.rotary = Rotary(cfg.head_dim, cfg.rope_dims, cfg.rope_base, cfg.rope_ref_len)
        self.blocks = nn.ModuleList(Block(cfg, layer, attn_impl) for layer in range(cfg.num_layers))
        # U-Net skips (docs/DESIGN.md#model-forward step 2): encoder = first L//2 blocks; decoder block i < L//2 gets a skip.
        self.num_encoder = cfg.num_layers // 2
        self.skip_weights = (tag(nn.Parameter(torch.empty(self.num_encoder, d)), Role.SCALAR)  # (L//2, D)
                             if cfg.unet_skips and self.num_encoder > 0 else None)
        self.head = (None if cfg.tie_embeddings
                     else tag(nn.Parameter(torch.empty(cfg.vocab_size, d)), Role.HEAD))  # (V, D)
        self.init_weights()

    # ----------------------------------------------------------------------------------------------
    # Initialization (docs/DESIGN.md#model-init)
    # ----------------------------------------------------------------------------------------------

    def _init_matrix(self, w: Tensor, generator: torch.Generator | None) -> None:
        if self.cfg.ortho_init:
            nn.init.orthogonal_(w, gain=1.0, generator=generator)
        else:
            # nn.Linear's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as the naive baseline gets.
            bound = 1.0 / math.sqrt(w.size(1))
            nn.init.uniform_(w, -bound, bound, generator=generator)

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """Deterministic init from `generator` (or torch's global RNG), in a fixed parameter order.

        - tok_emb ~ N(0, tied_embed_init_std); q, k, v, up orthogonal (gain 1); o, down zero, so every
          block is the identity at init.
        - Bigram and VE projections orthogonal: PR #1019's generic orthogonal pass overrides their zero
          init (docs/DESIGN.md#model-init). PR #1019 applies that pass only when both dims are >= 64; we apply it at any
          size (identical at the record shape) because a zero projection times the zero bigram table
          would never receive a gradient at toy sizes.
        - Bigram table 0 (branch outputs 0 at step 0), scale 0.05; VE table ~ N(0, 0.01), shared scale
          0.1, per-layer scales 1.
        - attn/mlp scales 1, resid_mix (1, 0), skip weights 1, smear gate 0 (g = 0.5), q_gain = qk_gain_init.
        - Untied head zero (the naive baseline's lm_head zero init), so the initial loss is exactly ln V.
        """
        cfg, g = self.cfg, generator
        nn.init.normal_(self.tok_emb, mean=0.0, std=cfg.tied_embed_init_std, generator=g)
        for block in self.blocks:
            attn, mlp = block.attn, block.mlp
            for w in (attn.q, attn.k, attn.v, mlp.up):
                self._init_matrix(w, g)
            attn.o.zero_()
            mlp.down.zero_()
            attn.q_gain.fill_(cfg.qk_gain_init)
            block.attn_scale.fill_(1.0)
            block.mlp_scale.fill_(1.0)
            if block.resid_mix is not None:
                block.resid_mix[0].fill_(1.0)
                block.resid_mix[1].zero_()
        if self.skip_weights is not None:
            self.skip_weights.fill_(1.0)
        if self.smear is not None:
            self.smear.w.zero_()
        if self.bigram is not None:
            self.bigram.table.zero_()
            self._init_matrix(self.bigram.proj, g)
            self.bigram.scale.fill_(_BIGRAM_SCALE_INIT)
        if self.ve is not None:
            nn.init.normal_(self.ve.table, mean=0.0, std=_VE_TABLE_STD, generator=g)
            self._init_matrix(self.ve.proj, g)
            self.ve.scale.fill_(_VE_SCALE_INIT)
            self.ve.layer_scales.fill_(1.0)
        if self.head is not None:
            self.head.zero_()

    # ----------------------------------------------------------------------------------------------
    # Forward
    # ----------------------------------------------------------------------------------------------

    def embed(self, idx: Tensor) -> Tensor:
        """idx (B, T) -> x0 (B, T, D): rms(tok_emb + bigram), then SmearGate. With model.doc_isolation a BOS
        takes nothing from the token before it (the bigram's reserved bucket, no smear)."""
        iso = self.cfg.doc_isolation
        x = F.embedding(idx, self.tok_emb)  # (B, T, D)
        if self.bigram is not None:
            x = x + self.bigram(idx, self.cfg.bos_id if iso else None).to(x.dtype)
        x = rms_norm(x)
        if self.smear is not None:
            x = self.smear(x, idx == self.cfg.bos_id if iso else None)
        return x

    def segments(self, idx: Tensor) -> DocSegments | None:
        """The document segments of idx (B, T) under model.doc_isolation, else None (plain causal)."""
        return DocSegments.of(idx, self.cfg.bos_id) if self.cfg.doc_isolation else None

    def forward_hidden(self, idx: Tensor, rope_len: int | None = None, lora: LoraAdapters | None = None) -> Tensor:
        """idx (B, T) int -> final RMS-normed hidden state (B, T, D) (the input of the head).

        rope_len: take the NTK rotary base of this length instead of T (what `decode_hidden` does with
        its cache length); positions are 0 .. T-1 either way.
        """
        _, t = idx.shape
        x = x0 = self.embed(idx)  # (B, T, D)
        ve = self.ve(idx) if self.ve is not None else None  # (B, T, Hkv*Dh), shared by the VE layers
        cos, sin = self.rotary(t, idx.device, x.dtype, base_len=rope_len)  # (T, R/2) each, shared by all layers
        return self._blocks(x, x0, ve, cos, sin, None, self.segments(idx), lora)

    def decode_hidden(self, idx: Tensor, cache: KVCache) -> Tensor:
        """Incremental forward: idx (B, P) = every token so far, of which positions cache.pos .. P-1 are new
        -> their hidden states (B, P - cache.pos, D); the cache then holds P positions.

        Equal, up to float summation order, to forward_hidden(idx, rope_len=cache.max_len)[:, cache.pos:]
        (tests/parity/test_kv_cache.py). The input side only needs the two tokens before the new ones:
        the BigramHash of position p reads token p-1, and the SmearGate of p reads the embedding of p-1.
        """
        start, end = cache.pos, idx.size(1)
        if not start < end <= cache.max_len:
            raise ValueError(f"decode_hidden: {end} tokens with {start} cached (max_len {cache.max_len})")
        lo = max(0, start - 2)
        x = x0 = self.embed(idx[:, lo:])[:, start - lo:]  # (B, N, D)
        ve = self.ve(idx[:, start:]) if self.ve is not None else None
        if cache.rope is None:
            cache.rope = self.rotary(cache.max_len, idx.device, x.dtype)  # (max_len, R/2) each, made once
        cos, sin = cache.rope
        h = self._blocks(x, x0, ve, cos[start:end], sin[start:end], cache.slots, self.segments(idx))
        for slot in cache.slots:
            slot.pos = end
        cache.pos = end
        return h

    def new_kv_cache(self, max_len: int) -> KVCache:
        """An empty cache for decoding up to max_len positions (`decode_hidden`)."""
        return KVCache(len(self.blocks), max_len)

    def _blocks(self, x: Tensor, x0: Tensor, ve: Tensor | None, cos: Tensor, sin: Tensor,
                slots: list[KVSlot] | None, segments: DocSegments | None = None,
                lora: LoraAdapters | None = None) -> Tensor:
        """The layer stack with U-Net skips and value embeddings -> rms(x) (B, T, D)."""
        skips: list[Tensor] = []
        for i, block in enumerate(self.blocks):
            if self.skip_weights is not None and i >= self.num_encoder and skips:
                # LIFO: decoder block 0 gets the last encoder output, decoder L//2-1 gets block 0's.
                x = x + self.skip_weights[i - self.num_encoder].to(x.dtype) * skips.pop()
            j = self.ve_slot[i]
            ve_i = ve * self.ve.layer_scales[j].to(ve.dtype) if j >= 0 else None
            x = block(x, x0, cos, sin, ve_i, None if slots is None else slots[i], segments, lora)
            if self.skip_weights is not None and i < self.num_encoder:
                skips.append(x)
        return rms_norm(x)

    def output_weight(self) -> nn.Parameter:
        """The head's weight (V, D): tok_emb when tied, else the untied head."""
        return self.tok_emb if self.head is None else self.head

    def logits_from_hidden(self, h: Tensor, lora: LoraAdapters | None = None) -> Tensor:
        """h (B, T, D) -> softcapped logits (B, T, V), upcast to fp32 (kept fp64 for an fp64 model); lora adds
        the per-row head adapter before the softcap."""
        w = self.output_weight()  # (V, D)
        logits = F.linear(h, w.to(h.dtype))
        if lora is not None and (d := lora.delta(HEAD, "head", h)) is not None:
            logits = logits + d.to(logits.dtype)
        if logits.dtype not in (torch.float32, torch.float64):
            logits = logits.float()
        c = self.cfg.logit_softcap
        if c > 0:
            logits = c * torch.tanh(logits / c)  # logit softcap (naive baseline / PR #1019)
        return logits

    def forward(self, idx: Tensor, rope_len: int | None = None, lora: LoraAdapters | None = None) -> Tensor:
        """idx (B, T) int -> logits (B, T, V). rope_len: the NTK rotary base of that length (padded batches
        use the window length); lora: per-row adapters (test-time training)."""
        return self.logits_from_hidden(self.forward_hidden(idx, rope_len, lora), lora)

    def loss(self, idx: Tensor, targets: Tensor, reduction: str = "mean") -> Tensor:
        """Cross-entropy (natural log) of the fp32 logits: a scalar, or (B, T) with reduction="none"."""
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        logits = self.forward(idx)
        nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction=reduction)
        return nll.view(targets.shape) if reduction == "none" else nll

    # ----------------------------------------------------------------------------------------------
    # Bookkeeping
    # ----------------------------------------------------------------------------------------------

    def set_qat(self, bits: int) -> None:
        """Late QAT: fake-quantize every attention/MLP matrix to `bits` in the forward (0 = off)."""
        for block in self.blocks:
            block.attn.qat_bits = bits
            block.mlp.qat_bits = bits

    @property
    def qat_bits(self) -> int:
        return self.blocks[0].attn.qat_bits

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def param_count_by_role(self) -> dict[str, int]:
        """{role name: parameter count}; raises if a parameter has no role."""
        return count_by_role(self)


class KVCache:
    """Decoding state of one batch of sequences: a `KVSlot` per layer and the number of cached positions.
    Every position uses the rotary base of max_len (see `GPT.decode_hidden`)."""

    def __init__(self, num_layers: int, max_len: int) -> None:
        if max_len < 1:
            raise ValueError(f"KV cache max_len must be >= 1, got {max_len}")
        self.max_len = max_len
        self.pos = 0
        self.slots = [KVSlot(max_len) for _ in range(num_layers)]
        self.rope: tuple[Tensor, Tensor] | None = None
