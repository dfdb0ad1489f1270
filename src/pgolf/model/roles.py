"""Parameter roles: what a parameter IS decides how it is optimized, decayed, quantized and adapted.

Roles are assigned where a parameter is created (`tag(param, Role.X)`) and read everywhere else
(`role_of(param)`); nothing downstream matches parameter names. A test checks that every parameter
of every preset's model carries exactly one role.

| role   | what                                              |
|--------|---------------------------------------------------|
| matrix | attention q/k/v/o and MLP up/down matrices        |
| embed  | token embedding, bigram table, value-embed table  |
| head   | untied output head                                |
| proj   | small projections (bigram 112->512, VE 128->256)  |
| scalar | per-channel vectors and gains (scales, resid mix, q gain, skip weights) |
| gate   | gates (SmearGate)                                  |

What each role gets is ONE table, `ROLE_POLICY`, read by the optimizer builder (pgolf.optim.build), the
quantizer (pgolf.quant.schemes), the size estimate (tools budget) and test-time training (scoring.ttt):

| role   | optimizer (docs/DESIGN.md#train-optimizers) | peak LR key                     | stored as (#quant-schemes)       | TTT |
|--------|-----------------------------------------|---------------------------------|----------------------------------|-----|
| matrix | Muon (weight decay muon_wd)             | matrix_lr                       | matrix: GPTQ/RTN at matrix_bits  | yes |
| embed  | AdamW (adam_wd)                         | tied_embed_lr (untied: embed_lr) | table: per-row clip at embed_bits | yes |
| head   | AdamW                                   | head_lr                         | table (GPTQ'd as the output head) | yes |
| proj, scalar, gate | AdamW                       | scalar_lr                       | fp16 passthrough                 | yes |
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

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


@dataclass(frozen=True)
class RolePolicy:
    """How one role is trained, stored and adapted (the table in the module docstring)."""

    optimizer: str
    """"muon" or "adamw" (optim.matrix_optimizer=adamw moves matrices to AdamW)."""
    lr: str
    """The OptimConfig field holding the role's peak LR."""
    quant: str
    """"matrix" (GPTQ or RTN at quant.matrix_bits), "table" (one clip per row at quant.embed_bits; the
    output head's table may be GPTQ'd), or "fp16" (passthrough)."""
    ttt: bool
    """Trained by test-time training (score.ttt)."""
    lr_untied: str | None = None
    """The LR field instead of `lr` when model.tie_embeddings is off (the token table is then not the head)."""

    def lr_key(self, tie_embeddings: bool) -> str:
        return self.lr if tie_embeddings or self.lr_untied is None else self.lr_untied

    def bits(self, quant_cfg) -> int | None:
        """The bit width of this role's integer grid under `quant_cfg` (None for fp16)."""
        return {"matrix": quant_cfg.matrix_bits, "table": quant_cfg.embed_bits}.get(self.quant)


ROLE_POLICY: dict[Role, RolePolicy] = {
    Role.MATRIX: RolePolicy("muon", "matrix_lr", "matrix", True),
    Role.EMBED: RolePolicy("adamw", "tied_embed_lr", "table", True, lr_untied="embed_lr"),
    Role.HEAD: RolePolicy("adamw", "head_lr", "table", True),
    Role.PROJ: RolePolicy("adamw", "scalar_lr", "fp16", True),
    Role.SCALAR: RolePolicy("adamw", "scalar_lr", "fp16", True),
    Role.GATE: RolePolicy("adamw", "scalar_lr", "fp16", True),
}


def role_policy(role: Role) -> RolePolicy:
    return ROLE_POLICY[Role(role)]


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
