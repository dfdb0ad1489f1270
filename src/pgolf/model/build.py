"""Building a GPT from its config and a seed, the one way every stage does it."""

from __future__ import annotations

import torch

from pgolf.config import ModelConfig
from pgolf.model.attention import AttnImpl
from pgolf.model.gpt import GPT
from pgolf.model.roles import retag, roles_by_name


def build_gpt(model_cfg: ModelConfig, seed: int, device: torch.device | str = "cpu",
              attn_impl: AttnImpl | None = None) -> GPT:
    """The model, initialized from `seed` alone (built on the meta device first, so init runs once)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        model = GPT(model_cfg, attn_impl=attn_impl)
    roles = roles_by_name(model)
    model = model.to_empty(device="cpu")  # new Parameter objects: carry the roles over by name
    retag(model, roles)
    model.init_weights(gen)
    return model.to(device)


def parameter_shapes(model_cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """{parameter name: shape} of the model `model_cfg` describes, without allocating its weights."""
    with torch.device("meta"):
        return {n: tuple(p.shape) for n, p in GPT(model_cfg).named_parameters()}
