"""Optimizers by parameter role behind one small facade (docs/DESIGN.md#train-optimizers).

Which optimizer and which peak LR a role gets is the role policy table (`pgolf.model.roles.ROLE_POLICY`):
matrices on Muon (weight decay muon_wd; AdamW with adam_wd when optim.matrix_optimizer=adamw), every other
role on AdamW (adam_wd), each role with its own LR key (tied_embed_lr / embed_lr, head_lr, scalar_lr).

All AdamW groups share betas (beta1, beta2) and eps, so they live in one torch AdamW with one param
group per role; that is the same math as the record's two AdamW instances. Every group keeps its
peak LR under "base_lr" so the schedule multiplies a fixed value and a resumed run gets it back from
the state dict.

Distributed contract: gradients are averaged across ranks by the trainer before `clip_grad_norm_`
and `step`; AdamW is then replicated on every rank and Muon only shards its Newton-Schulz work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from pgolf.config import OptimConfig
from pgolf.model.roles import Role, role_of, role_policy
from pgolf.optim.muon import Muon
from pgolf.runtime import DistEnv

_ROLE_ORDER = (Role.MATRIX, Role.EMBED, Role.HEAD, Role.PROJ, Role.SCALAR, Role.GATE)


@dataclass
class Optimizers:
    """The run's optimizers: `muon` (None when matrices use AdamW or there are none) and `adamw`."""

    muon: Muon | None
    adamw: torch.optim.AdamW | None

    @property
    def all(self) -> list[torch.optim.Optimizer]:
        return [o for o in (self.muon, self.adamw) if o is not None]

    def params(self) -> list[torch.Tensor]:
        return [p for o in self.all for g in o.param_groups for p in g["params"]]

    def step(self, lr_mult: float, muon_momentum: float | None = None) -> None:
        """Set every group's lr = base_lr * lr_mult (and Muon's momentum, if given), then step all."""
        for opt in self.all:
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * lr_mult
                if muon_momentum is not None and opt is self.muon:
                    group["momentum"] = muon_momentum
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.all:
            opt.zero_grad(set_to_none=set_to_none)

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """Clip the global gradient norm over all parameters to max_norm; returns the pre-clip norm.

        No host sync (the norm stays a tensor). Call it on the averaged gradients: the record clipped
        each rank's local gradient (docs/DESIGN.md#train-muon), which makes the result depend on the world
        size; clipping after the all-reduce keeps the same math at every world size.
        max_norm <= 0 only measures the norm.
        """
        params = [p for p in self.params() if p.grad is not None]
        if not params:
            return torch.zeros(())
        if max_norm > 0:
            return nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
        return nn.utils.get_total_norm([p.grad for p in params], foreach=True)

    def state_dict(self) -> dict[str, Any]:
        # Param groups (with base_lr, lr, momentum) and per-parameter state of each optimizer.
        return {"muon": None if self.muon is None else self.muon.state_dict(),
                "adamw": None if self.adamw is None else self.adamw.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in ("muon", "adamw"):
            opt, saved = getattr(self, name), state.get(name)
            if (opt is None) != (saved is None):
                raise ValueError(f"optimizer state mismatch for {name!r}: the checkpoint "
                                 f"{'has no' if saved is None else 'has a'} {name} state but this run "
                                 f"{'uses' if opt is not None else 'does not use'} it")
            if opt is not None:
                opt.load_state_dict(saved)

    def groups_summary(self) -> dict[str, dict[str, Any]]:
        """{role: {optimizer, lr, base_lr, wd, tensors, numel}} for logging."""
        out = {}
        for opt in self.all:
            for g in opt.param_groups:
                out[g["role"]] = {"optimizer": type(opt).__name__, "lr": g["lr"], "base_lr": g["base_lr"],
                                  "wd": g["weight_decay"], "tensors": len(g["params"]),
                                  "numel": sum(p.numel() for p in g["params"])}
        return out


def _params_by_role(model: nn.Module) -> dict[Role, list[nn.Parameter]]:
    out: dict[Role, list[nn.Parameter]] = {r: [] for r in Role}
    for name, p in model.named_parameters():
        try:
            role = role_of(p)
        except KeyError:
            raise ValueError(f"parameter {name!r} has no role; tag it with pgolf.model.roles.tag() "
                             f"where it is created") from None
        if p.requires_grad:
            out[role].append(p)
    return out


def build_optimizers(model: nn.Module, optim_cfg: OptimConfig, *, tie_embeddings: bool,
                     dist_env: DistEnv | None = None, device: torch.device | str = "cpu") -> Optimizers:
    """One Muon for Role.MATRIX (unless optim_cfg.matrix_optimizer == "adamw") and one AdamW for the rest.

    Every trainable parameter lands in exactly one group; an untagged parameter is a ValueError.
    Frozen parameters (requires_grad False) are left out.
    """
    by_role = _params_by_role(model)
    device = torch.device(device)
    role_lr = {r: getattr(optim_cfg, role_policy(r).lr_key(tie_embeddings)) for r in Role}

    muon = None
    adam_groups = []
    for role in _ROLE_ORDER:
        params = by_role[role]
        if not params:
            continue
        lr = role_lr[role]
        if role_policy(role).optimizer == "muon" and optim_cfg.matrix_optimizer == "muon":
            muon = Muon([{"params": params, "role": role.value, "base_lr": lr}], lr=lr,
                        momentum=optim_cfg.muon_momentum, nesterov=optim_cfg.muon_nesterov,
                        weight_decay=optim_cfg.muon_wd, ns_steps=optim_cfg.muon_backend_steps,
                        dist_env=dist_env, sharded=optim_cfg.muon_sharded)
        else:
            adam_groups.append({"params": params, "role": role.value, "base_lr": lr, "lr": lr})

    adamw = None
    if adam_groups:
        # fused AdamW is CUDA-only here; on CPU the default (foreach) implementation is used.
        adamw = torch.optim.AdamW(adam_groups, betas=(optim_cfg.beta1, optim_cfg.beta2), eps=optim_cfg.adam_eps,
                                  weight_decay=optim_cfg.adam_wd, fused=True if device.type == "cuda" else None)
    return Optimizers(muon=muon, adamw=adamw)
