"""Muon and Parallel Muon (docs/DESIGN.md#train-muon; Keller Jordan's Muon, PR #399 "parameter banking").

Update of one matrix parameter W (rows x cols) with averaged gradient g, per step:

    buf <- mu * buf + g                                  momentum buffer (fp32, param dtype)
    u   <- g + mu * buf   (Nesterov)  |  u <- buf        (plain)
    u   <- NS5(u)                                        approximate orthogonalization, below
    W   <- W * (1 - lr * wd)                             decoupled weight decay
    W   <- W - lr * sqrt(max(1, rows / cols)) * u

A parameter with more than two dims (a "bank", e.g. (22, 512, 512)) is a stack of independent
matrices over its leading dims; each is updated as above.

Distribution contract (docs/DESIGN.md#house-rules, house rule 7 "same math at every world size"):

* The gradients Muon sees MUST already be averaged across ranks (the trainer all-reduces them before
  `step`). Muon never reduces gradients itself.
* Momentum buffers are kept for every matrix on every rank (the momentum update is cheap elementwise
  work), so optimizer state is replicated and a checkpoint does not depend on the world size.
* With `sharded=True` and world size W > 1 only the Newton-Schulz work is split: every matrix is
  owned by exactly one rank (a deterministic, cost-balanced assignment), the owner orthogonalizes it,
  and the results are all-gathered so every rank applies identical updates. Sharding therefore
  changes who computes, never what is computed. At world size 1 (or `sharded=False`) the very same
  code runs with one owner and no communication.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pgolf.runtime import DistEnv

# Quintic Newton-Schulz coefficients tuned for fast convergence of the singular values into a band
# around 1 rather than exactly to 1 (Keller Jordan's Muon; docs/DESIGN.md#train-muon).
NS_COEFFS = (3.4445, -4.7750, 2.0315)


def _default_ns_dtype(device: torch.device) -> torch.dtype:
    # bf16 on CUDA as in the record (docs/DESIGN.md#train-muon); CPU bf16 matmuls are slow and imprecise, so fp32.
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def newton_schulz5(G: torch.Tensor, steps: int = 5, *, dtype: torch.dtype | None = None,
                   eps: float = 1e-7) -> torch.Tensor:
    """Approximately orthogonalize G (..., rows, cols): returns ~U V^T of G's SVD, per matrix.

    Leading dims are a batch: every matrix is normalized and iterated independently, and a batched
    call gives the same bits per matrix as one call per matrix (checked by the tests on CPU).
    Computed and returned in `dtype` (default: bf16 on CUDA, float32 elsewhere); callers cast.
    """
    if G.ndim < 2:
        raise ValueError(f"newton_schulz5 needs a (..., rows, cols) tensor, got shape {tuple(G.shape)}")
    a, b, c = NS_COEFFS
    X = G.to(dtype or _default_ns_dtype(G.device))
    # Work on the wide orientation so A = X X^T is the smaller (min x min) Gram matrix.
    transposed = G.size(-2) > G.size(-1)
    if transposed:
        X = X.mT
    # Frobenius normalization bounds the spectral norm by 1, inside NS's convergence region.
    X = X / (torch.linalg.vector_norm(X, dim=(-2, -1), keepdim=True) + eps)
    for _ in range(steps):
        A = X @ X.mT  # (..., min, min)
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    if transposed:
        X = X.mT
    return X


@dataclass(frozen=True)
class _Entry:
    """A parameter's matrices inside a bucket: bucket rows [offset, offset + count)."""

    group: int  # index into param_groups (looked up at step time: lr/momentum change every step)
    param: torch.Tensor
    pindex: int  # position of the parameter in the flat param_groups order
    offset: int
    count: int


@dataclass(frozen=True)
class _Bucket:
    """All matrices of one (rows, cols) shape, Newton-Schulz'd as one batch."""

    shape: tuple[int, int]
    entries: tuple[_Entry, ...]
    counts: tuple[int, ...]  # matrices owned by each rank
    starts: tuple[int, ...]  # first bucket row owned by each rank (contiguous ranges, rank order)

    @property
    def total(self) -> int:
        return sum(self.counts)


def _ns_cost(shape: tuple[int, int]) -> int:
    # FLOPs of one NS iteration up to a constant: X X^T and B X are s*s*l each, A A is s^3.
    s, l_ = min(shape), max(shape)
    return 2 * s * s * l_ + s ** 3


def _assign(buckets: list[tuple[tuple[int, int], int]], world: int) -> list[tuple[int, ...]]:
    """Per bucket, how many of its matrices each rank owns.

    Each bucket is split as evenly as possible (floor(K/W) each, so the all-gather pads little); the
    K mod W leftovers go to the ranks with the least NS cost assigned so far (ties: lower rank), so
    odd-sized buckets do not all land on rank 0. Deterministic: every rank computes the same answer.
    """
    loads = [0] * world
    out = []
    for shape, k in buckets:
        counts = [k // world] * world
        for r in sorted(range(world), key=lambda r: (loads[r], r))[: k % world]:
            counts[r] += 1
        for r in range(world):
            loads[r] += counts[r] * _ns_cost(shape)
        out.append(tuple(counts))
    return out


class Muon(torch.optim.Optimizer):
    """Muon over matrix parameters (ndim >= 2), optionally sharding Newton-Schulz across ranks.

    Per-group keys: lr, momentum, nesterov, weight_decay. The trainer sets `lr` and
    `momentum` every step (schedule.py). Gradients must already be averaged across ranks (see module
    docstring).

    ns_steps: Newton-Schulz iterations (optimizer-wide).
    dist_env: the run's DistEnv; None means a single process.
    sharded: split the NS work across ranks (Parallel Muon); ignored at world size 1.
    ns_dtype: Newton-Schulz precision; None = bf16 on CUDA, float32 on CPU.
    """

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict], lr: float = 0.02,
                 momentum: float = 0.95, nesterov: bool = True, weight_decay: float = 0.0,
                 ns_steps: int = 5, *, dist_env: DistEnv | None = None, sharded: bool = True,
                 ns_dtype: torch.dtype | None = None) -> None:
        if lr < 0 or weight_decay < 0 or not 0 <= momentum < 1 or ns_steps < 1:
            raise ValueError(f"Muon: bad hyperparameters lr={lr} momentum={momentum} "
                             f"weight_decay={weight_decay} ns_steps={ns_steps}")
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim < 2:
                    raise ValueError(f"Muon only takes matrices (ndim >= 2); got a parameter of shape "
                                     f"{tuple(p.shape)}; give vectors and scalars to AdamW")
        env = dist_env or DistEnv()
        self.world_size = env.world_size if (sharded and env.world_size > 1) else 1
        self.rank = env.rank if self.world_size > 1 else 0
        # Optimizer-wide, not per group: one NS batch may mix matrices from several groups.
        self.ns_steps = ns_steps
        self.ns_dtype = ns_dtype
        self._plan_key: tuple | None = None
        self._plan: list[_Bucket] = []

    # ---------------------------------------------------------------------------------------------
    # Planning: which matrices are batched together and which rank orthogonalizes them
    # ---------------------------------------------------------------------------------------------

    def _make_plan(self) -> list[_Bucket]:
        by_shape: dict[tuple[int, int], list[_Entry]] = {}
        sizes: dict[tuple[int, int], int] = {}
        pindex = 0
        for gi, group in enumerate(self.param_groups):
            for p in group["params"]:
                if p.grad is not None:
                    shape = (p.size(-2), p.size(-1))
                    count = p.numel() // (shape[0] * shape[1])
                    off = sizes.get(shape, 0)
                    by_shape.setdefault(shape, []).append(_Entry(gi, p, pindex, off, count))
                    sizes[shape] = off + count
                pindex += 1
        # Largest NS cost first: its gather is launched first and has the most time to overlap.
        shapes = sorted(by_shape, key=lambda s: (-_ns_cost(s), s))
        counts = _assign([(s, sizes[s]) for s in shapes], self.world_size)
        plan = []
        for s, cnt in zip(shapes, counts):
            starts = tuple(sum(cnt[:r]) for r in range(self.world_size))
            plan.append(_Bucket(s, tuple(by_shape[s]), cnt, starts))
        return plan

    def _get_plan(self) -> list[_Bucket]:
        # Rebuilt only when the set of parameters with gradients changes (normally never after step 0).
        key = tuple(id(p) for g in self.param_groups for p in g["params"] if p.grad is not None)
        if key != self._plan_key:
            self._plan, self._plan_key = self._make_plan(), key
        return self._plan

    def owned_matrices(self) -> list[tuple[int, int]]:
        """(parameter index in param_groups order, matrix index within it) this rank orthogonalizes.

        Uses the current gradients to decide which parameters take part (as `step` does).
        """
        out = []
        for bucket in self._get_plan():
            a = bucket.starts[self.rank]
            b = a + bucket.counts[self.rank]
            for e in bucket.entries:
                out.extend((e.pindex, i - e.offset) for i in range(max(a, e.offset), min(b, e.offset + e.count)))
        return sorted(out)

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        # torch rebuilds the param_groups dicts here; the plan reads them by index, but start afresh.
        self._plan_key = None

    # ---------------------------------------------------------------------------------------------
    # Step
    # ---------------------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        # 1. Momentum for every matrix on every rank (replicated state; see module docstring).
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            bufs = []
            for p in params:
                st = self.state[p]
                if "momentum_buffer" not in st:
                    st["momentum_buffer"] = torch.zeros_like(p)
                bufs.append(st["momentum_buffer"])
            torch._foreach_mul_(bufs, group["momentum"])
            torch._foreach_add_(bufs, [p.grad for p in params])

        # 2. Each rank orthogonalizes the matrices it owns, bucket by bucket, and launches the
        #    all-gather of the results without waiting, so comms overlap the next bucket's NS.
        pending = []
        for bucket in self._get_plan():
            pending.append(self._orthogonalize_owned(bucket))

        # 3. Every rank applies every update (identical on all ranks).
        for bucket, gathered, work in pending:
            if work is not None:
                work.wait()
            if self.world_size > 1:
                full = torch.cat([t[:c] for t, c in zip(gathered, bucket.counts)])
            else:
                full = gathered[0]
            rows, cols = bucket.shape
            scale = max(1.0, rows / cols) ** 0.5
            for e in bucket.entries:
                group = self.param_groups[e.group]
                lr, wd = group["lr"], group["weight_decay"]
                u = full[e.offset:e.offset + e.count].reshape(e.param.shape).to(e.param.dtype)
                if wd != 0:
                    e.param.mul_(1.0 - lr * wd)
                e.param.add_(u, alpha=-lr * scale)
        return loss

    def _orthogonalize_owned(self, bucket: _Bucket):
        rows, cols = bucket.shape
        first = bucket.entries[0].param
        ns_dtype = self.ns_dtype or _default_ns_dtype(first.device)
        a = bucket.starts[self.rank]
        n_own = bucket.counts[self.rank]
        # Every rank contributes the same-sized block to the all-gather; padding rows stay zero.
        local = torch.zeros((max(bucket.counts), rows, cols), dtype=ns_dtype, device=first.device)
        if n_own:
            U = torch.empty((n_own, rows, cols), dtype=first.dtype, device=first.device)
            for e in bucket.entries:
                lo, hi = max(a, e.offset), min(a + n_own, e.offset + e.count)
                if lo >= hi:
                    continue
                group = self.param_groups[e.group]
                g3 = e.param.grad.reshape(-1, rows, cols)
                buf3 = self.state[e.param]["momentum_buffer"].reshape(-1, rows, cols)
                # One op per matrix (not per slice of a bank), so the elementwise kernel sees the same
                # element layout whichever rank and world size computes it: bitwise equal updates.
                for i in range(lo, hi):
                    j = i - e.offset
                    if group["nesterov"]:
                        torch.add(g3[j], buf3[j], alpha=group["momentum"], out=U[i - a])
                    else:
                        U[i - a].copy_(buf3[j])
            local[:n_own] = newton_schulz5(U, self.ns_steps, dtype=ns_dtype)
        if self.world_size == 1:
            return bucket, [local], None
        gathered = [torch.empty_like(local) for _ in range(self.world_size)]
        work = dist.all_gather(gathered, local, async_op=True)
        return bucket, gathered, work
