"""Exponential moving average of all weights (docs/DESIGN.md#train-ema): ema <- d * ema + (1 - d) * w each step.

The shadow is float32 regardless of the training dtype and is loaded into the model at the end.
"""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.names = [n for n, _ in model.named_parameters()]
        self.shadow = [p.detach().float().clone() for _, p in model.named_parameters()]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        params = [p.detach().float() for _, p in model.named_parameters()]
        torch._foreach_lerp_(self.shadow, params, 1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        for p, s in zip(model.parameters(), self.shadow, strict=True):
            p.copy_(s.to(p.dtype))

    def state_dict(self) -> dict:
        return {"decay": self.decay, "names": list(self.names), "shadow": [s.clone() for s in self.shadow]}

    def load_state_dict(self, state: dict) -> None:
        if list(state["names"]) != self.names:
            raise ValueError("EMA state does not match the model's parameters")
        self.decay = float(state["decay"])
        for s, t in zip(self.shadow, state["shadow"], strict=True):
            s.copy_(t)
