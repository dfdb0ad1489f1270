"""A model <-> its artifact file: `save_model_artifact` writes one, `load_artifact` rebuilds the GPT from it.

The file format is `pgolf.quant.container`; the storage schemes are `pgolf.quant.schemes`. What is
scored is always a model rebuilt here from the file alone (config from the manifest, dequantized
weights), never the in-memory weights it was made from.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from pgolf.config import ConfigError, model_from_dict, to_dict
from pgolf.model.build import parameter_shapes
from pgolf.model.gpt import GPT
from pgolf.model.roles import roles_by_name
from pgolf.quant.container import artifact_error, read_artifact, write_artifact
from pgolf.quant.schemes import QTensor, apply_quantized_


def dequantized_copy(model: nn.Module, tensors: Mapping[str, QTensor]) -> nn.Module:
    """A deep copy of `model` carrying the dequantized weights (the in-memory twin of load_artifact)."""
    m = copy.deepcopy(model)
    return apply_quantized_(m, tensors)


def load_artifact(path: str | os.PathLike, device: str | torch.device = "cpu") -> GPT:
    """Rebuild the GPT from the artifact alone (config from the manifest, dequantized weights), eval mode."""
    manifest, tensors = read_artifact(path)
    try:
        cfg = model_from_dict(manifest["model"], source=f"{path} manifest")
    except ConfigError as e:
        raise artifact_error(path, f"invalid model config: {e}") from None
    # Shapes first, on the meta device (no memory): a config that disagrees with the stored tensors, or
    # that would describe a huge model, is refused before any real allocation.
    shapes = parameter_shapes(cfg)
    stored = {t["name"]: tuple(t["shape"]) for t in manifest["tensors"]}
    if shapes != stored:
        bad = sorted(set(shapes.items()) ^ set(stored.items()))[:3]
        raise artifact_error(path, f"model config does not match the stored tensors (e.g. {bad})")
    with torch.random.fork_rng(devices=[]):  # GPT() initializes from the global RNG; leave the caller's alone
        model = GPT(cfg)
    try:
        apply_quantized_(model, tensors)
    except ValueError as e:
        raise artifact_error(path, str(e)) from None
    return model.to(device).eval()


def save_model_artifact(path: str | os.PathLike, model: nn.Module, tensors: Mapping[str, QTensor], quant_cfg,
                        *, layout: str = "int8", compressor: str | None = None,
                        extra: Mapping[str, Any] | None = None) -> int:
    """write_artifact with the model's config, roles and the quant config filled in; returns bytes written.
    compressor: overrides quant_cfg.compressor (e.g. the one "auto" already chose)."""
    return write_artifact(path, to_dict(model.cfg), tensors, compressor or quant_cfg.compressor,
                          roles=roles_by_name(model), quant_cfg_dict=to_dict(quant_cfg), layout=layout, extra=extra)
