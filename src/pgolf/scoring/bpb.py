"""Sum, then divide: the one place where loss and bits per byte are computed (docs/DESIGN.md#data-bpb).

Scorers add per-target NLL (natural log) and per-target bytes; the accumulator keeps float64 sums
of (nats, targets, bytes), all-reduces the *sums* across ranks, and divides once::

    val_loss = nats / targets                    (nats per token)
    val_bpb  = nats / (ln 2 * bytes)             (bits per byte)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass

import torch

from pgolf.runtime import DistEnv

SCORED_TAP: ContextVar[Callable[[torch.Tensor, torch.Tensor], None] | None] = ContextVar("SCORED_TAP", default=None)
"""Audit hook (pgolf.audit: normalization and self-prediction probes). While set, every scorer that was
given nll_out calls it once per batch with (stream-order target indices (n,), the log-probabilities of the
scored distribution over the full vocabulary (n, V)). Unset (the default), scoring is unchanged."""


@dataclass(frozen=True)
class Score:
    loss: float
    """Mean NLL in nats per target token."""
    bpb: float
    nats: float
    targets: int
    bytes: int

    def to_json(self) -> dict:
        return {"val_loss": self.loss, "val_bpb": self.bpb, "nats": self.nats, "targets": self.targets,
                "bytes": self.bytes}


class ScoreAccumulator:
    def __init__(self, device: torch.device | str = "cpu"):
        # [nats, targets, bytes], float64 so 62M-target sums stay exact to well below 1e-9 relative.
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)
        self._reduced = False

    def add(self, nll: torch.Tensor, nbytes: torch.Tensor) -> None:
        """nll: per-target natural-log NLL (any float dtype); nbytes: per-target bytes (same shape)."""
        if self._reduced:
            raise RuntimeError("ScoreAccumulator: add() after all_reduce()")
        if nll.shape != nbytes.shape:
            raise ValueError(f"nll shape {tuple(nll.shape)} != bytes shape {tuple(nbytes.shape)}")
        self.sums[0] += nll.detach().to(torch.float64).sum()
        self.sums[1] += nll.numel()
        self.sums[2] += nbytes.to(torch.float64).sum()

    def all_reduce(self, env: DistEnv) -> ScoreAccumulator:
        """Sum across ranks (once); a no-op at world size 1."""
        if not self._reduced:
            env.all_reduce_(self.sums)
            self._reduced = True
        return self

    def result(self) -> Score:
        nats, n, b = (float(x) for x in self.sums.cpu())  # sync point: once per evaluation
        if n == 0 or b == 0:
            raise ValueError(f"nothing scored (targets={int(n)}, bytes={int(b)})")
        if not math.isfinite(nats):
            raise FloatingPointError(f"non-finite summed NLL ({nats}); refusing to report a BPB")
        return Score(loss=nats / n, bpb=nats / (math.log(2) * b), nats=nats, targets=int(n), bytes=int(b))
