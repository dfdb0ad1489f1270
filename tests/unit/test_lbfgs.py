"""Batched L-BFGS: each row is its own problem (history, step, line search), checked against slow twins."""

import numpy as np
import pytest
import torch

from pgolf.scoring.lbfgs import GRAD, REASONS, lbfgs_batched

LS = ["strong_wolfe", "armijo"]
F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def _quadratic(B, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(B, n, n, generator=g, dtype=F64)
    A = M @ M.transpose(1, 2) + 0.3 * torch.eye(n, dtype=F64)
    b = torch.randn(B, n, generator=g, dtype=F64)

    def f(X, rows):
        return 0.5 * torch.einsum("bi,bij,bj->b", X, A[rows], X) - (b[rows] * X).sum(-1)

    return f, A, b


def _rosen(X, rows):
    return ((1 - X[:, :-1]) ** 2 + 100 * (X[:, 1:] - X[:, :-1] ** 2) ** 2).sum(-1)


def _softmax_nll(B, P, V, seed=0):
    """SLOT-like: per-row bias on fixed logits, NLL of P targets (convex, not quadratic)."""
    g = torch.Generator().manual_seed(seed)
    L = 2 * torch.randn(B, P, V, generator=g, dtype=F64)
    y = torch.randint(0, V, (B, P), generator=g)

    def f(X, rows):
        z = L[rows] + X[:, None, :]
        return (torch.logsumexp(z, -1) - z.gather(-1, y[rows][..., None])[..., 0]).mean(-1)

    return f


@pytest.mark.parametrize("ls", LS)
@pytest.mark.parametrize("problem", ["quadratic", "rosenbrock", "softmax"])
def test_batch_equals_each_row_alone(ls, problem):
    B, n = 7, 6
    if problem == "quadratic":
        f, _, _ = _quadratic(B, n)
    elif problem == "rosenbrock":
        f = _rosen
    else:
        f = _softmax_nll(B, 5, n)
    x0 = torch.randn(B, n, generator=torch.Generator().manual_seed(1), dtype=F64)
    kw = dict(max_iter=30, history_size=4, line_search=ls, max_eval=60)
    res = lbfgs_batched(f, x0, **kw)
    for i in range(B):
        one = lbfgs_batched(lambda X, rows, i=i: f(X, rows + i), x0[i:i + 1], **kw)
        torch.testing.assert_close(one.x[0], res.x[i], rtol=0, atol=1e-10)
        assert one.loss[0].item() == pytest.approx(res.loss[i].item(), abs=1e-12)
        assert int(one.n_iter[0]) == int(res.n_iter[i])
        assert int(one.n_eval[0]) == int(res.n_eval[i])
        assert int(one.reason[0]) == int(res.reason[i])


@pytest.mark.parametrize("ls", LS)
def test_rows_do_not_mix(ls):
    """Changing problem j's objective changes nothing in row i's result (exactly)."""
    B, n = 5, 8
    f = _softmax_nll(B, 6, n, seed=3)
    f2 = _softmax_nll(B, 6, n, seed=4)
    mixed = lambda X, rows: torch.where(rows == 2, f2(X, rows), f(X, rows))  # noqa: E731
    x0 = torch.zeros(B, n, dtype=F64)
    a = lbfgs_batched(f, x0, max_iter=15, history_size=5, line_search=ls)
    b = lbfgs_batched(mixed, x0, max_iter=15, history_size=5, line_search=ls)
    keep = torch.arange(B) != 2
    assert torch.equal(a.x[keep], b.x[keep])
    assert torch.equal(a.n_eval[keep], b.n_eval[keep])
    assert not torch.equal(a.x[2], b.x[2])


@pytest.mark.parametrize("ls", LS)
def test_quadratic_reaches_known_minimizer_and_scipy(ls):
    scipy_opt = pytest.importorskip("scipy.optimize")
    B, n = 4, 10
    f, A, b = _quadratic(B, n, seed=2)
    xstar = torch.linalg.solve(A, b)
    res = lbfgs_batched(f, torch.zeros(B, n, dtype=F64), max_iter=200, history_size=10, max_eval=500,
                        line_search=ls, tolerance_grad=1e-10, tolerance_change=1e-14)
    torch.testing.assert_close(res.x, xstar, rtol=0, atol=1e-6)
    for i in range(B):
        Ai, bi = A[i].numpy(), b[i].numpy()
        sp = scipy_opt.minimize(lambda x, Ai=Ai, bi=bi: 0.5 * x @ Ai @ x - bi @ x, np.zeros(n),
                                jac=lambda x, Ai=Ai, bi=bi: Ai @ x - bi,
                                method="L-BFGS-B", options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 500})
        np.testing.assert_allclose(res.x[i].numpy(), sp.x, rtol=0, atol=1e-5)
        assert res.loss[i].item() == pytest.approx(sp.fun, abs=1e-10)


@pytest.mark.parametrize("ls", LS)
def test_rosenbrock_converges(ls):
    x0 = torch.randn(6, 4, generator=torch.Generator().manual_seed(5), dtype=F64)
    res = lbfgs_batched(_rosen, x0, max_iter=500, history_size=10, max_eval=5000, line_search=ls,
                        tolerance_grad=1e-9, tolerance_change=1e-15)
    # minimizer (1, 1, 1, 1) (x0 does not start near the 4-d saddle/local minimum at (-1, 1, 1, 1))
    assert (res.x - 1).abs().max().item() < 1e-6
    assert res.loss.max().item() < 1e-12


def test_converged_rows_stay_fixed_and_are_not_evaluated():
    B, n = 4, 3
    f, A, b = _quadratic(B, n, seed=7)
    x0 = torch.randn(B, n, dtype=F64)
    x0[1] = torch.linalg.solve(A[1], b[1])  # row 1 starts at its minimizer (up to rounding)
    seen = []

    def spy(X, rows):
        seen.append(rows.clone())
        return f(X, rows)

    res = lbfgs_batched(spy, x0, max_iter=50, history_size=5, tolerance_grad=1e-6)
    assert int(res.n_iter[1]) == 0 and REASONS[int(res.reason[1])] == "grad" and int(res.reason[1]) == GRAD
    assert torch.equal(res.x[1], x0[1])
    assert sum(int((r == 1).sum()) for r in seen) == 1  # only the initial evaluation
    # every other row: once it stopped, it was never evaluated again and its point is its final one
    for i in (0, 2, 3):
        assert int(res.n_eval[i]) == sum(int((r == i).sum()) for r in seen)
    torch.testing.assert_close(res.x, torch.linalg.solve(A, b), rtol=0, atol=1e-4)  # |g| <= 1e-6, cond ~ 50


def test_max_eval_is_a_hard_per_row_cap_and_max_iter_zero():
    f = _softmax_nll(3, 4, 9, seed=1)
    x0 = torch.zeros(3, 9, dtype=F64)
    for me in (1, 3, 7):
        res = lbfgs_batched(f, x0, max_iter=100, max_eval=me)
        assert int(res.n_eval.max()) <= me
    res = lbfgs_batched(f, x0, max_iter=0)
    assert torch.equal(res.x, x0) and int(res.n_eval.max()) == 1


def test_analytic_gradient_path_equals_autograd():
    B, P, V = 3, 5, 7
    g = torch.Generator().manual_seed(9)
    L = torch.randn(B, P, V, generator=g, dtype=F64)
    y = torch.randint(0, V, (B, P), generator=g)

    def f(X, rows):
        z = L[rows] + X[:, None, :]
        return (torch.logsumexp(z, -1) - z.gather(-1, y[rows][..., None])[..., 0]).mean(-1)

    def fg(X, rows):
        z = L[rows] + X[:, None, :]
        sm = z.softmax(-1)
        grad = sm.mean(1).scatter_add(-1, y[rows], torch.full(y[rows].shape, -1.0 / P, dtype=F64))
        return f(X, rows), grad

    a = lbfgs_batched(f, torch.zeros(B, V, dtype=F64), max_iter=10)
    b = lbfgs_batched(fg, torch.zeros(B, V, dtype=F64), max_iter=10, returns_grad=True)
    torch.testing.assert_close(a.x, b.x, rtol=0, atol=1e-10)
    assert (a.loss < f(torch.zeros(B, V, dtype=F64), torch.arange(B))).all()
