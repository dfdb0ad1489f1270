"""A model <-> its artifact file: `save_model_artifact` writes one, `load_artifact` rebuilds the GPT from it.

The file format is `pgolf.quant.container`; the storage schemes are `pgolf.quant.schemes`. What is
scored is always a model rebuilt here from the file alone (config from the manifest, dequantized
weights), never the in-memory weights it was made from.

Before anything is decompressed or built, `manifest_model` checks the manifest's model section like any
config (types, ranges, the size limits of docs/DESIGN.md#size-rule) and its tensor index against the
shapes that config implies (computed by arithmetic), so the payload can inflate to at most what those
parameters occupy in the stored layouts, and the model built is the one the file pays for.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from pgolf.config import ConfigError, ModelConfig, model_from_dict, to_dict
from pgolf.config.model import MAX_PARAMS, MIN_BITS_PER_PARAM
from pgolf.model.build import empty_gpt, parameter_shapes
from pgolf.model.gpt import GPT
from pgolf.model.roles import roles_by_name
from pgolf.quant.container import artifact_error, decode_payload, open_artifact, write_artifact
from pgolf.quant.schemes import QTensor, apply_quantized_


def dequantized_copy(model: nn.Module, tensors: Mapping[str, QTensor]) -> nn.Module:
    """A deep copy of `model` carrying the dequantized weights (the in-memory twin of load_artifact)."""
    m = copy.deepcopy(model)
    return apply_quantized_(m, tensors)


def max_layout_bytes(shapes: Mapping[str, tuple[int, ...]]) -> int:
    """The most raw payload bytes these parameters can occupy in any stored layout: fp16 values (2 bytes
    each) or, for a matrix, int8 Q plus an fp16 scale per row (int6p packs Q smaller)."""
    total = 0
    for shape in shapes.values():
        n = math.prod(shape)
        total += max(2 * n, n + 2 * shape[0]) if len(shape) == 2 else 2 * n
    return total


def manifest_model(path: str | os.PathLike, manifest: Mapping[str, Any], payload_bytes: int) -> ModelConfig:
    """The model config an `open_artifact` manifest declares, checked before anything is decompressed or
    built: the config validates (strict JSON types, ranges, size limits); the tensor index names exactly
    the parameters of that config with their shapes (by arithmetic); raw_bytes is within what those
    parameters can occupy; and a config that opts out of the size limits declares no more parameters than
    its payload could hold at MIN_BITS_PER_PARAM (the rule that gives MAX_PARAMS, with the file's own
    payload in place of the cap), so memory stays proportional to the file. ArtifactError names the file."""
    try:
        cfg = model_from_dict(manifest["model"], source=f"{path} manifest")
    except ConfigError as e:
        raise artifact_error(path, f"invalid model config: {e}") from None
    shapes = parameter_shapes(cfg)
    stored = {t["name"]: tuple(t["shape"]) for t in manifest["tensors"]}
    if shapes != stored:
        bad = sorted(set(shapes.items()) ^ set(stored.items()))[:3]
        raise artifact_error(path, f"model config does not match the stored tensors (e.g. {bad})")
    if manifest["raw_bytes"] > max_layout_bytes(shapes):
        raise artifact_error(path, f"raw_bytes {manifest['raw_bytes']} exceed the {max_layout_bytes(shapes)} "
                                   "bytes the model's parameters can occupy")
    payload_limit = int(payload_bytes * 8 / MIN_BITS_PER_PARAM)
    if not cfg.size_limits and cfg.num_params > max(MAX_PARAMS, payload_limit):
        raise artifact_error(path, f"model.size_limits=false, but {cfg.num_params:,} parameters exceed both "
                                   f"{MAX_PARAMS:,} and the {payload_limit:,} that its {payload_bytes:,}-byte "
                                   "payload can hold at log2(3) bits each")
    return cfg


def load_artifact(path: str | os.PathLike, device: str | torch.device = "cpu") -> GPT:
    """Rebuild the GPT from the artifact alone (config from the manifest, dequantized weights), eval mode.
    The manifest is checked against its model config (`manifest_model`) before the payload is inflated."""
    manifest, payload = open_artifact(path)
    cfg = manifest_model(path, manifest, len(payload))
    tensors = decode_payload(path, manifest, payload)
    model = empty_gpt(cfg)  # no init and no RNG: every parameter is overwritten below
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
