"""Parameter roles: what a parameter IS decides how it is optimized, decayed, quantized and adapted.

Roles are assigned where a parameter is created (`tag(param, Role.X)`) and read everywhere else
(`role_of(param)`); nothing downstream matches parameter names. A test checks that every parameter
of every preset's model carries exactly one role.

| role   | what                                              | optimizer (STACK.md 4.2)      | quantization (5.1) |
|--------|---------------------------------------------------|-------------------------------|--------------------|
| matrix | attention q/k/v/o and MLP up/down matrices        | Muon, matrix_lr, muon_wd      | GPTQ int6          |
| embed  | token embedding, bigram table, value-embed table  | AdamW, tied_embed_lr, adam_wd | int8 per row       |
| head   | untied output head                                | AdamW, head_lr                | int8 per row       |
| proj   | small projections (bigram 112->512, VE 128->256)  | AdamW, scalar_lr              | fp16 passthrough   |
| scalar | per-channel vectors and gains (scales, resid mix, q gain, skip weights) | AdamW, scalar_lr | fp16 passthrough |
| gate   | gates (SmearGate)                                  | AdamW, scalar_lr              | fp16 passthrough   |
"""

from __future__ import annotations

import enum

import torch
from torch import nn


class Role(enum.StrEnum):
    MATRIX = "matrix"
    EMBED = "embed"
    HEAD = "head"
    PROJ = "proj"
    SCALAR = "scalar"
    GATE = "gate"


_ATTR = "_pgolf_role"


def tag(param: nn.Parameter, role: Role) -> nn.Parameter:
    """Attach a role to a parameter (returns it, so `self.w = tag(nn.Parameter(...), Role.MATRIX)`)."""
    if not isinstance(param, nn.Parameter):
        raise TypeError("roles are attached to nn.Parameter objects")
    setattr(param, _ATTR, Role(role))
    return param


def role_of(param: torch.Tensor) -> Role:
    role = getattr(param, _ATTR, None)
    if role is None:
        raise KeyError("parameter has no role; tag it where it is created")
    return role


def roles_by_name(model: nn.Module) -> dict[str, Role]:
    """{parameter name: role} for every parameter of the module (raises if one is untagged)."""
    out = {}
    for name, p in model.named_parameters():
        role = getattr(p, _ATTR, None)
        if role is None:
            raise KeyError(f"parameter {name!r} has no role")
        out[name] = role
    return out


def params_by_role(model: nn.Module) -> dict[Role, list[nn.Parameter]]:
    out: dict[Role, list[nn.Parameter]] = {r: [] for r in Role}
    for _, p in model.named_parameters():
        out[role_of(p)].append(p)
    return out


def count_by_role(model: nn.Module) -> dict[str, int]:
    counts = {r.value: 0 for r in Role}
    for p in model.parameters():
        counts[role_of(p).value] += p.numel()
    return counts


def retag(model: nn.Module, roles: dict[str, Role]) -> None:
    """Re-attach roles by name after an operation that replaces Parameter objects (e.g. to_empty)."""
    for name, p in model.named_parameters():
        tag(p, roles[name])
