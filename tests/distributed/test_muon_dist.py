"""Parallel Muon on 2 gloo ranks == single-process Muon, bit for bit (STACK.md 4.3; ARCHITECTURE.md 4.7 rule 7)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pgolf.optim.muon import Muon
from pgolf.runtime import DistEnv
from tests.helpers.dist import spawn_gloo

pytestmark = pytest.mark.dist

# Buckets with 3, 1, 2 (a bank) and 1 matrices: over 2 ranks some buckets split, odd ones land on the
# less-loaded rank, so each rank orthogonalizes a different, non-empty subset.
SHAPES = [(32, 48), (32, 48), (32, 48), (64, 32), (2, 16, 24), (24, 24)]
STEPS = 3
LRS, MUS = [0.02, 0.01, 0.005], [0.92, 0.95, 0.99]


def _params() -> list[nn.Parameter]:
    g = torch.Generator().manual_seed(0)
    return [nn.Parameter(torch.randn(*s, generator=g) * 0.1) for s in SHAPES]


def _local_grads(rank: int, step: int) -> list[torch.Tensor]:
    """What rank `rank` would compute on its own micro-batch (differs per rank)."""
    g = torch.Generator().manual_seed(1000 * step + rank)
    return [torch.randn(s, generator=g) for s in SHAPES]


def _averaged_grads(world: int, step: int) -> list[torch.Tensor]:
    # Same arithmetic as the all-reduce below: sum of the ranks' grads, then one division.
    # (With 2 addends the sum is order-independent, so this is bitwise what gloo produces.)
    per_rank = [_local_grads(r, step) for r in range(world)]
    return [torch.stack(gs).sum(0) / world for gs in zip(*per_rank)]


def _make_opt(params, dist_env, sharded):
    # Two groups (different weight decay and Nesterov) sharing shapes, so buckets mix groups.
    return Muon([{"params": params[:3], "weight_decay": 0.04}, {"params": params[3:], "nesterov": False}],
                dist_env=dist_env, sharded=sharded)


def _train(params, opt, grads_for_step):
    for step in range(STEPS):
        for p, g in zip(params, grads_for_step(step)):
            p.grad = g
        for group in opt.param_groups:
            group["lr"], group["momentum"] = LRS[step], MUS[step]
        opt.step()
    return [p.detach().clone() for p in params]


def _rank_body(env: DistEnv) -> dict[bool, dict]:
    def grads(step):
        # The trainer's contract: Muon receives gradients already averaged across ranks.
        local = _local_grads(env.rank, step)
        for t in local:
            env.all_reduce_(t)
            t.div_(env.world_size)
        return local

    out = {}
    for sharded in (True, False):  # one spawn for both modes: starting ranks dominates the runtime
        params = _params()
        opt = _make_opt(params, env, sharded)
        out[sharded] = {"params": _train(params, opt, grads), "owned": opt.owned_matrices()}
    return out


@pytest.mark.timeout(90)
def test_sharded_muon_two_ranks_equals_single_process():
    world = 2
    single_params = _params()
    expect = _train(single_params, _make_opt(single_params, None, True), lambda s: _averaged_grads(world, s))

    results = spawn_gloo(world, _rank_body, timeout=60.0)
    for sharded in (True, False):
        owned = [r[sharded]["owned"] for r in results]
        if sharded:
            assert owned[0] and owned[1] and not set(owned[0]) & set(owned[1])
            assert len(owned[0]) + len(owned[1]) == 3 + 1 + 2 + 1
        else:
            assert owned[0] == owned[1]  # unsharded: every rank computes everything
        for r, res in enumerate(results):
            for i, (got, want) in enumerate(zip(res[sharded]["params"], expect)):
                assert got.dtype == torch.float32
                assert torch.equal(got, want), f"sharded={sharded} rank {r} param {i}: max diff {(got - want).abs().max()}"
