"""Building a GPT from its config and a seed, the one way every stage does it."""

from __future__ import annotations

import torch

from pgolf.config import ModelConfig
from pgolf.model.attention import AttnImpl
from pgolf.model.gpt import GPT
from pgolf.model.roles import retag, roles_by_name


def empty_gpt(model_cfg: ModelConfig, attn_impl: AttnImpl | None = None) -> GPT:
    """The model with UNINITIALIZED CPU weights (built on the meta device, so nothing is initialized or drawn
    from any RNG): for callers that overwrite every parameter, such as loading an artifact."""
    with torch.device("meta"):
        model = GPT(model_cfg, attn_impl=attn_impl)
    roles = roles_by_name(model)
    model = model.to_empty(device="cpu")  # new Parameter objects: carry the roles over by name
    retag(model, roles)
    return model


def build_gpt(model_cfg: ModelConfig, seed: int, device: torch.device | str = "cpu",
              attn_impl: AttnImpl | None = None) -> GPT:
    """The model, initialized from `seed` alone (built on the meta device first, so init runs once)."""
    model = empty_gpt(model_cfg, attn_impl)
    model.init_weights(torch.Generator().manual_seed(seed))
    return model.to(device)


def parameter_shapes(model_cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """{parameter name: shape} of GPT(model_cfg), in named_parameters() order, by arithmetic: no module is
    built, so this is cheap for any validated config and is what an artifact's tensor index is checked
    against before anything is decompressed (tests/hardening/test_artifact_shapes.py: equal to a real GPT's
    for every preset and for random valid configs)."""
    c = model_cfg
    d, kv, f, n_layers = c.model_dim, c.kv_dim, c.mlp_hidden, c.num_layers
    out: dict[str, tuple[int, ...]] = {"tok_emb": (c.vocab_size, d)}
    # GPT's own parameters first (registration order), then its submodules'
    if c.unet_skips and n_layers // 2 > 0:
        out["skip_weights"] = (n_layers // 2, d)
    if not c.tie_embeddings:
        out["head"] = (c.vocab_size, d)
    if c.bigram_buckets > 0:
        out |= {"bigram.table": (c.bigram_buckets, c.bigram_dim), "bigram.proj": (d, c.bigram_dim),
                "bigram.scale": (1,)}
    if c.smear_gate:
        out["smear.w"] = (d,)
    if c.ve_layers:
        out |= {"ve.table": (c.vocab_size, c.ve_dim), "ve.proj": (kv, c.ve_dim), "ve.scale": (1,),
                "ve.layer_scales": (len(c.ve_layers),)}
    for i in range(n_layers):
        b = f"blocks.{i}."
        out |= {b + "attn_scale": (d,), b + "mlp_scale": (d,)}
        if c.resid_mix:
            out[b + "resid_mix"] = (2, d)
        out |= {b + "attn.q": (d, d), b + "attn.k": (kv, d), b + "attn.v": (kv, d), b + "attn.o": (d, d),
                b + "attn.q_gain": (c.num_heads,), b + "mlp.up": (f, d), b + "mlp.down": (d, f)}
    return out
