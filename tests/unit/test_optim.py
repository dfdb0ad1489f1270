"""Muon, Newton-Schulz, the role -> optimizer split and the schedules (STACK.md 4.2-4.4)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from pgolf.config import OptimConfig
from pgolf.model.roles import Role, tag
from pgolf.optim.build import Optimizers, build_optimizers
from pgolf.optim.muon import Muon, newton_schulz5
from pgolf.optim.schedule import lr_multiplier, muon_momentum
from pgolf.runtime import DistEnv

A_, B_, C_ = 3.4445, -4.7750, 2.0315


# --------------------------------------------------------------------------------------------------
# Independent references (float64, one matrix at a time, no transpose trick)
# --------------------------------------------------------------------------------------------------


def ref_ns(G: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """NS5 on one 2-D matrix in float64. Tall matrices use the right-hand form X(bA + cA^2), A = X^T X,
    which equals the transposed computation mathematically but shares no code path with it."""
    X = G.double() / (G.double().norm() + 1e-7)
    tall = X.shape[0] > X.shape[1]
    for _ in range(steps):
        if tall:
            A = X.T @ X
            X = A_ * X + X @ (B_ * A + C_ * A @ A)
        else:
            A = X @ X.T
            X = A_ * X + (B_ * A + C_ * A @ A) @ X
    return X


def ref_scalar_ns(s: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """NS acts on each singular value through the odd quintic p(x) = a x + b x^3 + c x^5."""
    for _ in range(steps):
        s = A_ * s + B_ * s**3 + C_ * s**5
    return s


def ref_muon(params, grads_per_step, *, lrs, mus, wd, nesterov):
    """Plain loop-over-params Muon in float64; returns the final parameters."""
    ps = [p.detach().double().clone() for p in params]
    bufs = [torch.zeros_like(p) for p in ps]
    for grads, lr, mu in zip(grads_per_step, lrs, mus):
        for p, g, buf in zip(ps, grads, bufs):
            g = g.double()
            buf.copy_(mu * buf + g)
            u = g + mu * buf if nesterov else buf
            rows, cols = p.shape[-2:]
            upd = torch.stack([ref_ns(m) for m in u.reshape(-1, rows, cols)]).reshape(p.shape)
            p.copy_(p * (1 - lr * wd) - lr * math.sqrt(max(1.0, rows / cols)) * upd)
    return ps


# --------------------------------------------------------------------------------------------------
# Newton-Schulz
# --------------------------------------------------------------------------------------------------

SHAPES = [(64, 64), (32, 96), (96, 32)]


@pytest.mark.parametrize("shape", SHAPES)
def test_ns_singular_values_follow_the_quintic(shape):
    """Output singular values are exactly p^5(input singular values) (float64), i.e. NS is right."""
    G = torch.randn(8, *shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = newton_schulz5(G, dtype=torch.float64)
    s_in = torch.linalg.svdvals(G / (torch.linalg.vector_norm(G, dim=(-2, -1), keepdim=True) + 1e-7))
    expect = ref_scalar_ns(s_in).abs().sort(dim=-1, descending=True).values
    torch.testing.assert_close(torch.linalg.svdvals(out), expect, rtol=0, atol=1e-10)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype,lo,hi", [(torch.float32, 0.65, 1.25), (torch.bfloat16, 0.6, 1.3)])
def test_ns_singular_value_band(shape, dtype, lo, hi):
    """Measured on these seeds (fp32): 3:1 shapes [0.682, 1.134]; 64x64 max 1.202 but its smallest
    singular values stay small (down to ~0.04): a square Gaussian has input singular values below
    a^-5 ~ 2e-3 of its Frobenius norm, which 5 steps cannot lift. So: all <= hi, and for square
    matrices >= 97% (measured 99.3%) inside [lo, hi]."""
    G = torch.randn(16, *shape, generator=torch.Generator().manual_seed(0))
    s = torch.linalg.svdvals(newton_schulz5(G, dtype=dtype).double())
    assert s.max() <= hi
    inside = ((s >= lo) & (s <= hi)).double().mean().item()
    if shape[0] == shape[1]:
        assert inside >= 0.97
    else:
        assert inside == 1.0, s.min()


@pytest.mark.parametrize("shape", SHAPES)
def test_ns_batched_equals_unbatched_and_reference(shape):
    G = torch.randn(5, *shape, generator=torch.Generator().manual_seed(2))
    batched = newton_schulz5(G)
    assert batched.dtype == torch.float32  # CPU default
    for i in range(5):
        assert torch.equal(batched[i], newton_schulz5(G[i]))
        torch.testing.assert_close(batched[i].double(), ref_ns(G[i]), rtol=0, atol=2e-5)
    G64 = G.double()
    for i in range(5):
        torch.testing.assert_close(newton_schulz5(G64[i], dtype=torch.float64), ref_ns(G64[i]), rtol=0, atol=1e-12)


def test_ns_transpose_path():
    G = torch.randn(96, 32, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    tall = newton_schulz5(G, dtype=torch.float64)
    wide = newton_schulz5(G.T.contiguous(), dtype=torch.float64)
    assert tall.shape == (96, 32)
    torch.testing.assert_close(tall, wide.T, rtol=0, atol=1e-12)
    # Semi-orthogonal-ish: the 32x32 Gram matrix of the tall output is close to the identity.
    gram = tall.T @ tall
    assert (torch.linalg.eigvalsh(gram) > 0.65**2).all() and (torch.linalg.eigvalsh(gram) < 1.25**2).all()


def test_ns_rejects_vectors():
    with pytest.raises(ValueError, match="rows, cols"):
        newton_schulz5(torch.randn(8))


# --------------------------------------------------------------------------------------------------
# Muon vs the reference
# --------------------------------------------------------------------------------------------------


def _matrices(dtype):
    g = torch.Generator().manual_seed(4)
    shapes = [(32, 48), (32, 48), (96, 32), (2, 16, 24), (24, 24)]
    return [nn.Parameter(torch.randn(*s, generator=g, dtype=dtype) * 0.1) for s in shapes]


def _grads(params, steps, seed=5):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params] for _ in range(steps)]


def _run_muon(opt, params, grads_per_step, lrs, mus):
    for grads, lr, mu in zip(grads_per_step, lrs, mus):
        for p, g in zip(params, grads):
            p.grad = g.clone()
        for group in opt.param_groups:
            group["lr"], group["momentum"] = lr, mu
        opt.step()


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_muon_matches_reference(nesterov, dtype, tol):
    params = _matrices(dtype)
    init = [p.detach().clone() for p in params]
    grads = _grads(params, 4)
    lrs, mus, wd = [0.02, 0.015, 0.01, 0.005], [0.92, 0.94, 0.96, 0.99], 0.04
    opt = Muon(params, nesterov=nesterov, weight_decay=wd, ns_dtype=dtype)
    _run_muon(opt, params, grads, lrs, mus)
    expect = ref_muon(init, grads, lrs=lrs, mus=mus, wd=wd, nesterov=nesterov)
    for p, e in zip(params, expect):
        torch.testing.assert_close(p.detach().double(), e, rtol=0, atol=tol)


@pytest.mark.parametrize("shape,factor", [((96, 32), math.sqrt(3.0)), ((32, 96), 1.0), ((48, 48), 1.0)])
def test_muon_aspect_ratio_factor(shape, factor):
    p = nn.Parameter(torch.zeros(shape, dtype=torch.float64))
    g = torch.randn(shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    p.grad = g.clone()
    Muon([p], lr=0.1, momentum=0.0, weight_decay=0.0, ns_dtype=torch.float64).step()
    torch.testing.assert_close(p.detach(), -0.1 * factor * ref_ns(g), rtol=0, atol=1e-12)


def test_muon_weight_decay_is_decoupled():
    p = nn.Parameter(torch.full((8, 8), 2.0, dtype=torch.float64))
    p.grad = torch.zeros_like(p)  # NS(0) = 0: only the decay acts
    Muon([p], lr=0.5, momentum=0.9, weight_decay=0.1, ns_dtype=torch.float64).step()
    assert torch.equal(p.detach(), torch.full((8, 8), 2.0 * (1 - 0.5 * 0.1), dtype=torch.float64))


def test_muon_rejects_vectors():
    with pytest.raises(ValueError, match="matrices"):
        Muon([nn.Parameter(torch.zeros(8))])


def test_muon_world_one_sharded_flag_is_noop():
    a, b = _matrices(torch.float32), _matrices(torch.float32)
    grads = _grads(a, 3)
    _run_muon(Muon(a, weight_decay=0.04, sharded=True), a, grads, [0.02] * 3, [0.95] * 3)
    _run_muon(Muon(b, weight_decay=0.04, sharded=False), b, grads, [0.02] * 3, [0.95] * 3)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("world", [2, 3, 4])
def test_shard_assignment_partitions_and_balances(world):
    """Simulated ranks (no process group needed to plan): every matrix has exactly one owner."""
    params = _matrices(torch.float32)
    for p in params:
        p.grad = torch.zeros_like(p)
    owned = [Muon(params, dist_env=DistEnv(rank=r, world_size=world)).owned_matrices() for r in range(world)]
    flat = [m for o in owned for m in o]
    every = [(i, j) for i, p in enumerate(params) for j in range(p.numel() // (p.shape[-2] * p.shape[-1]))]
    assert sorted(flat) == every  # a partition
    assert all(owned)  # 6 matrices over <= 4 ranks: nobody idle
    # Planning is deterministic: the same rank plans the same ownership twice.
    assert Muon(params, dist_env=DistEnv(rank=1, world_size=world)).owned_matrices() == owned[1]


# --------------------------------------------------------------------------------------------------
# build_optimizers and the facade
# --------------------------------------------------------------------------------------------------


class Tiny(nn.Module):
    def __init__(self, untagged: bool = False):
        super().__init__()
        g = torch.Generator().manual_seed(7)

        def P(*shape):
            return nn.Parameter(torch.randn(*shape, generator=g) * 0.1)

        self.emb = tag(P(16, 8), Role.EMBED)
        self.w1 = tag(P(8, 8), Role.MATRIX)
        self.bank = tag(P(2, 24, 8), Role.MATRIX)
        self.head = tag(P(16, 8), Role.HEAD)
        self.proj = tag(P(8, 4), Role.PROJ)
        self.scale = tag(P(8), Role.SCALAR)
        self.gate = tag(P(8), Role.GATE)
        if untagged:
            self.stray = P(3)


def _set_grads(model, seed):
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g)


CFG = OptimConfig()


def test_build_routes_every_role():
    model = Tiny()
    opts = build_optimizers(model, CFG, tie_embeddings=True, dist_env=DistEnv(), device="cpu")
    seen = [id(p) for p in opts.params()]
    assert sorted(seen) == sorted(id(p) for p in model.parameters())  # each exactly once
    s = opts.groups_summary()
    assert s["matrix"] == {"optimizer": "Muon", "lr": CFG.matrix_lr, "base_lr": CFG.matrix_lr, "wd": CFG.muon_wd,
                           "tensors": 2, "numel": 64 + 2 * 24 * 8}
    assert s["embed"]["optimizer"] == "AdamW" and s["embed"]["base_lr"] == CFG.tied_embed_lr
    assert s["head"]["base_lr"] == CFG.head_lr
    for role in ("proj", "scalar", "gate"):
        assert s[role]["optimizer"] == "AdamW" and s[role]["base_lr"] == CFG.scalar_lr
    for role in ("embed", "head", "proj", "scalar", "gate"):
        assert s[role]["wd"] == CFG.adam_wd
    assert opts.adamw.defaults["betas"] == (CFG.beta1, CFG.beta2) and opts.adamw.defaults["eps"] == CFG.adam_eps
    assert not opts.adamw.defaults["fused"]  # fused only on CUDA
    assert opts.muon.param_groups[0]["nesterov"] is CFG.muon_nesterov and opts.muon.ns_steps == CFG.muon_backend_steps


def test_build_untied_and_adamw_matrices():
    cfg = OptimConfig(matrix_optimizer="adamw", embed_lr=0.5)
    opts = build_optimizers(Tiny(), cfg, tie_embeddings=False, dist_env=None, device="cpu")
    assert opts.muon is None
    s = opts.groups_summary()
    assert s["matrix"]["optimizer"] == "AdamW" and s["matrix"]["base_lr"] == cfg.matrix_lr
    assert s["embed"]["base_lr"] == 0.5


def test_build_untagged_parameter_is_a_clear_error():
    with pytest.raises(ValueError, match="'stray' has no role"):
        build_optimizers(Tiny(untagged=True), CFG, tie_embeddings=True, dist_env=None, device="cpu")


def test_adamw_groups_match_torch_adamw():
    model, twin = Tiny(), Tiny()
    opts = build_optimizers(model, CFG, tie_embeddings=False, dist_env=None, device="cpu")
    lr = {"embed": CFG.embed_lr, "head": CFG.head_lr, "proj": CFG.scalar_lr, "scalar": CFG.scalar_lr,
          "gate": CFG.scalar_lr}
    names = ["emb", "head", "proj", "scale", "gate"]
    roles = ["embed", "head", "proj", "scalar", "gate"]
    ref = torch.optim.AdamW([{"params": [getattr(twin, n)], "lr": lr[r]} for n, r in zip(names, roles)],
                            betas=(CFG.beta1, CFG.beta2), eps=CFG.adam_eps, weight_decay=CFG.adam_wd)
    mults = [1.0, 0.8, 0.6, 0.4, 0.2]
    for step, m in enumerate(mults):
        _set_grads(model, step)
        _set_grads(twin, step)
        opts.step(m, 0.95)
        for group, r in zip(ref.param_groups, roles):
            group["lr"] = lr[r] * m
        ref.step()
    for n in names:
        assert torch.equal(getattr(model, n), getattr(twin, n)), n


def test_step_sets_lr_and_momentum():
    opts = build_optimizers(Tiny(), CFG, tie_embeddings=True, dist_env=None, device="cpu")
    _set_grads_all(opts, 0)
    opts.step(0.5, 0.93)
    assert opts.muon.param_groups[0]["lr"] == CFG.matrix_lr * 0.5
    assert opts.muon.param_groups[0]["momentum"] == 0.93
    assert all(g["lr"] == g["base_lr"] * 0.5 for g in opts.adamw.param_groups)
    opts.zero_grad()
    assert all(p.grad is None for p in opts.params())


def _set_grads_all(opts: Optimizers, seed: int):
    g = torch.Generator().manual_seed(seed)
    for p in opts.params():
        p.grad = torch.randn(p.shape, generator=g)


def test_clip_grad_norm_is_global():
    opts = build_optimizers(Tiny(), CFG, tie_embeddings=True, dist_env=None, device="cpu")
    _set_grads_all(opts, 1)
    expect = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in opts.params()]))
    norm = opts.clip_grad_norm_(0.3)
    assert isinstance(norm, torch.Tensor)
    torch.testing.assert_close(norm, expect)
    after = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in opts.params()]))
    torch.testing.assert_close(after, torch.tensor(0.3), rtol=1e-5, atol=0)
    torch.testing.assert_close(opts.clip_grad_norm_(0.0), after)  # 0 = measure only


def test_state_dict_round_trip_is_bit_exact():
    model = Tiny()
    opts = build_optimizers(model, CFG, tie_embeddings=True, dist_env=None, device="cpu")

    def steps(m, o, seeds):
        for s in seeds:
            _set_grads(m, s)
            o.clip_grad_norm_(0.3)
            o.step(lr_multiplier(s, 0, 0, 4, 6), muon_momentum(s, 0.92, 0.99, 4))

    steps(model, opts, range(3))
    saved_model = copy.deepcopy(model.state_dict())
    saved_opt = copy.deepcopy(opts.state_dict())
    steps(model, opts, range(3, 6))

    # A fresh run with a different config: the base LRs must come back from the state dict.
    other = Tiny()
    other.load_state_dict(saved_model)
    resumed = build_optimizers(other, OptimConfig(matrix_lr=0.5, scalar_lr=0.5, tied_embed_lr=0.5),
                               tie_embeddings=True, dist_env=None, device="cpu")
    resumed.load_state_dict(saved_opt)
    assert resumed.groups_summary()["matrix"]["base_lr"] == CFG.matrix_lr
    steps(other, resumed, range(3, 6))
    for (n, a), b in zip(model.named_parameters(), other.parameters()):
        assert torch.equal(a, b), n


def test_load_state_dict_refuses_optimizer_mismatch():
    muon_run = build_optimizers(Tiny(), CFG, tie_embeddings=True, dist_env=None, device="cpu")
    adam_run = build_optimizers(Tiny(), OptimConfig(matrix_optimizer="adamw"), tie_embeddings=True,
                                dist_env=None, device="cpu")
    with pytest.raises(ValueError, match="muon"):
        adam_run.load_state_dict(muon_run.state_dict())


# --------------------------------------------------------------------------------------------------
# Schedules (STACK.md 4.4)
# --------------------------------------------------------------------------------------------------


def test_lr_multiplier_wallclock():
    # 1 s per step, warmdown 100 steps = 100 s, cap 600 s: warmdown window is [500 s, 600 s].
    assert lr_multiplier(0, 0.0, 600.0, 100, 20_000) == 1.0
    assert lr_multiplier(100, 100.0, 600.0, 100, 20_000) == 1.0
    assert lr_multiplier(500, 500.0, 600.0, 100, 20_000) == pytest.approx(1.0)
    assert lr_multiplier(550, 550.0, 600.0, 100, 20_000) == pytest.approx(0.5)
    assert lr_multiplier(575, 575.0, 600.0, 100, 20_000) == pytest.approx(0.25)
    assert lr_multiplier(600, 600.0, 600.0, 100, 20_000) == 0.0
    assert lr_multiplier(650, 650.0, 600.0, 100, 20_000) == 0.0
    # The iteration count does not matter with a cap; a slower step widens the window in seconds.
    # At 2 s/step the window is 200 s: at 500 s (100 s left) the multiplier is 0.5, not 1.
    assert lr_multiplier(250, 500.0, 600.0, 100, 300) == pytest.approx(0.5)
    assert lr_multiplier(275, 550.0, 600.0, 100, 300) == pytest.approx(0.25)
    # A window longer than the cap decays from the first measured step (record behaviour).
    assert lr_multiplier(1, 1.0, 600.0, 4000, 20_000) == pytest.approx(599 / 4000)


def test_lr_multiplier_iterations():
    assert lr_multiplier(0, 0.0, 0.0, 200, 1000) == 1.0
    assert lr_multiplier(799, 9e9, 0.0, 200, 1000) == 1.0
    assert lr_multiplier(800, 0.0, 0.0, 200, 1000) == pytest.approx(1.0)
    assert lr_multiplier(900, 0.0, 0.0, 200, 1000) == pytest.approx(0.5)
    assert lr_multiplier(1000, 0.0, 0.0, 200, 1000) == 0.0
    assert lr_multiplier(1200, 0.0, 0.0, 200, 1000) == 0.0
    assert lr_multiplier(999, 0.0, 0.0, 0, 1000) == 1.0  # no warmdown


def test_lr_multiplier_fraction_of_the_budget():
    """warmdown_frac: the last 40% of the cap whatever the step time (a slow and a fast machine decay over the
    same seconds), or of the iterations without a cap; warmdown_iters is then ignored."""
    for step_s in (0.5, 1.0, 2.0):  # the same wallclock point on three machine speeds
        assert lr_multiplier(int(300 / step_s), 300.0, 600.0, 4000, 20_000, 0.4) == 1.0
        assert lr_multiplier(int(360 / step_s), 360.0, 600.0, 4000, 20_000, 0.4) == pytest.approx(1.0)
        assert lr_multiplier(int(480 / step_s), 480.0, 600.0, 4000, 20_000, 0.4) == pytest.approx(0.5)
        assert lr_multiplier(int(600 / step_s), 600.0, 600.0, 4000, 20_000, 0.4) == 0.0
    assert lr_multiplier(600, 0.0, 0.0, 7, 1000, 0.4) == pytest.approx(1.0)
    assert lr_multiplier(800, 0.0, 0.0, 7, 1000, 0.4) == pytest.approx(0.5)
    assert lr_multiplier(0, 0.0, 600.0, 0, 100, 0.4) == 1.0  # step 0, and warmdown_iters = 0 with a fraction
    assert lr_multiplier(10, 590.0, 600.0, 0, 100, 0.4) == pytest.approx(10 / 240)


def test_muon_momentum_ramp():
    assert muon_momentum(0, 0.92, 0.99, 1500) == pytest.approx(0.92)
    assert muon_momentum(750, 0.92, 0.99, 1500) == pytest.approx(0.955)
    assert muon_momentum(1500, 0.92, 0.99, 1500) == pytest.approx(0.99)
    assert muon_momentum(10_000, 0.92, 0.99, 1500) == pytest.approx(0.99)
    assert muon_momentum(0, 0.92, 0.99, 0) == 0.99
