"""Which scheme each parameter is stored with, by its role, and the `QTensor` that holds it (docs/DESIGN.md#quant-schemes).

A stored tensor is a `QTensor(scheme, data, scale)`:
- scheme "fp16": `data` = the values in fp16, `scale` None (passthrough);
- scheme "<method>_int<b>", method gptq | rtn (matrices) or pctl | sdclip (tables; one clip per row):
  `data` = Q int8 (rows, cols) on the symmetric b-bit grid, `scale` = fp16 (rows,), value = Q * scale.

`quantize_model` reads the role policy (`pgolf.model.roles.ROLE_POLICY`) for what each role gets.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import NamedTuple

import torch
from torch import Tensor, nn

from pgolf.model.roles import role_of, role_policy
from pgolf.quant.gptq import gptq_quantize
from pgolf.quant.grid import dequantize, row_clip_quantize, rtn_quantize

_SCHEME_RE = re.compile(r"(gptq|rtn|pctl|sdclip)_int([2-8])")


class QTensor(NamedTuple):
    """One stored tensor (see the module docstring)."""

    scheme: str
    data: Tensor
    scale: Tensor | None = None

    @staticmethod
    def of(entry) -> QTensor:
        """A QTensor from a QTensor or a plain (scheme, data[, scale]) tuple."""
        return entry if isinstance(entry, QTensor) else QTensor(*entry)


def scheme_bits(scheme: str) -> int | None:
    """Bits of a per-row integer scheme, None for "fp16"; ValueError for an unknown scheme."""
    if scheme == "fp16":
        return None
    m = _SCHEME_RE.fullmatch(scheme)
    if m is None:
        raise ValueError(f"unknown quantization scheme {scheme!r}")
    return int(m.group(2))


def quantize_model(model: nn.Module, quant_cfg, hessians: Mapping[str, Tensor] | None = None) -> dict[str, QTensor]:
    """{param name: QTensor}, the scheme chosen by the parameter's role policy (docs/DESIGN.md#quant-schemes):

    - matrix: GPTQ at matrix_bits with that matrix's Hessian; RTN (same grid and clip rule) when
      method = "rtn" or no Hessian is given for it;
    - embed / head: one clip per row at embed_bits, percentile 0.9999984 or SDClip (embed_sdclip_k);
      the output head's table instead gets GPTQ at embed_bits when method = "gptq", quant.head_gptq and
      a Hessian is given for it (damping head_damp, per-row clip choice by output error);
    - proj / scalar / gate: fp16 passthrough. method = "none" stores every tensor as fp16.
    """
    q = quant_cfg
    out: dict[str, QTensor] = {}
    for name, p in model.named_parameters():
        kind = role_policy(role_of(p)).quant
        W = p.detach()
        if q.method == "none" or kind == "fp16":
            out[name] = QTensor("fp16", W.to(torch.float16).cpu())
        elif kind == "matrix":
            H = None if (q.method == "rtn" or hessians is None) else hessians.get(name)
            if H is None:
                Q, s = rtn_quantize(W, bits=q.matrix_bits, clip=q.clip, sdclip_k=q.matrix_sdclip_k,
                                    scale_floor=q.scale_floor, select=q.clip_select)
                out[name] = QTensor(f"rtn_int{q.matrix_bits}", Q.cpu(), s.cpu())
            else:
                Q, s = gptq_quantize(W, H.to(W.device), bits=q.matrix_bits, block_size=q.block_size,
                                     damp=q.damp, act_order=q.act_order, clip=q.clip,
                                     sdclip_k=q.matrix_sdclip_k, scale_floor=q.scale_floor,
                                     select=q.clip_select)
                out[name] = QTensor(f"gptq_int{q.matrix_bits}", Q.cpu(), s.cpu())
        elif kind == "table":
            H = hessians.get(name) if (q.method == "gptq" and q.head_gptq and hessians is not None) else None
            if H is not None:  # the output head's table (quant.head_gptq)
                Q, s = gptq_quantize(W, H.to(W.device), bits=q.embed_bits, block_size=q.block_size,
                                     damp=q.head_damp, act_order=q.act_order, clip=q.clip,
                                     sdclip_k=q.embed_sdclip_k, scale_floor=q.scale_floor, select="row")
                out[name] = QTensor(f"gptq_int{q.embed_bits}", Q.cpu(), s.cpu())
                continue
            Q, s = row_clip_quantize(W, bits=q.embed_bits, clip=q.clip, sdclip_k=q.embed_sdclip_k,
                                     scale_floor=q.scale_floor)
            method = "pctl" if q.clip == "percentile" else "sdclip"
            out[name] = QTensor(f"{method}_int{q.embed_bits}", Q.cpu(), s.cpu())
        else:
            raise AssertionError(f"{name}: no quantization scheme for storage kind {kind!r}")
    return out


def dequantize_entry(entry: QTensor) -> Tensor:
    """QTensor -> fp32 tensor (q * s per row, or the fp16 values widened)."""
    entry = QTensor.of(entry)
    if scheme_bits(entry.scheme) is None:
        return entry.data.float()
    return dequantize(entry.data, entry.scale)


@torch.no_grad()
def apply_quantized_(model: nn.Module, tensors: Mapping[str, QTensor]) -> nn.Module:
    """Overwrite every parameter with its dequantized value (cast to the parameter's dtype). The names
    and shapes must match the model exactly (ValueError otherwise)."""
    params = dict(model.named_parameters())
    if set(params) != set(tensors):
        extra, missing = sorted(set(tensors) - set(params)), sorted(set(params) - set(tensors))
        raise ValueError(f"tensor names do not match the model: extra {extra[:3]}, missing {missing[:3]}")
    for name, p in params.items():
        v = dequantize_entry(tensors[name])
        if tuple(v.shape) != tuple(p.shape):
            raise ValueError(f"{name}: stored shape {tuple(v.shape)}, model has {tuple(p.shape)}")
        p.copy_(v.to(device=p.device, dtype=p.dtype))
    return model


def dequantized_copy(model: nn.Module, tensors: Mapping[str, QTensor]) -> nn.Module:
    """A deep copy of `model` carrying the dequantized weights (the in-memory twin of load_artifact)."""
    m = copy.deepcopy(model)
    return apply_quantized_(m, tensors)


def entropy_bytes(tensors: Mapping[str, QTensor]) -> dict[str, float]:
    """The ideal coded size of the stored symbols: per-tensor order-0 empirical entropy of Q (bits -> bytes),
    plus 2 bytes per fp16 scale and per fp16 passthrough value (taken as incompressible)."""
    sym = scales = passthrough = 0.0
    for entry in tensors.values():
        entry = QTensor.of(entry)
        if scheme_bits(entry.scheme) is None:
            passthrough += 2.0 * entry.data.numel()
            continue
        Q = entry.data.reshape(-1).to(torch.int64)
        if Q.numel():
            counts = torch.bincount(Q + 128, minlength=256).double()
            p = counts[counts > 0] / Q.numel()
            sym += float(-(p * p.log2()).sum()) * Q.numel() / 8.0
        scales += 2.0 * entry.scale.numel()
    return {"symbols": sym, "scales": scales, "passthrough": passthrough, "total": sym + scales + passthrough}
