"""Batched L-BFGS: B independent minimizations vectorized over the rows of a (B, n) tensor.

Why not `torch.optim.LBFGS` over a stacked tensor (docs/DESIGN.md#slot-legality): its two-loop inner products
(s^T y, y^T y, s^T q) and its single line-search step length mix every row's gradient and loss, so
row i's result would depend on row j's objective. Here every quantity is per row:

- each row has its own history (a ring buffer of `history_size` (s, y) pairs, its own count and
  head), its own H0 scaling s^T y / y^T y, its own two-loop recursion (row-wise dot products only);
- each row has its own initial step, its own line search (strong Wolfe with a cubic-interpolation /
  bisection zoom, or backtracking Armijo with a safeguarded quadratic step), its own evaluation
  budget and its own stopping state;
- a row that stops (gradient below `tolerance_grad`, no progress, iteration or evaluation budget
  spent, no descent direction, failed line search) is never changed again while the others go on.

The objective is a closure ``f(X, rows) -> losses`` (or ``-> (losses, grads)`` with
``returns_grad=True``): X is (b, n), the
current points of the problems listed in ``rows`` (a LongTensor of b indices into the batch, sorted;
b == B when every problem is evaluated), and it returns the b per-problem losses (and optionally
their gradients, else autograd computes them). The caller guarantees that loss r depends only on
row r of X (and on problem rows[r]); under that guarantee no computation here mixes problems, so
running B problems together gives what running each alone gives (bitwise in practice on CPU, since
every reduction is a row-wise reduction over n; tests hold it to 1e-10 in float64).

Algorithm per row (Nocedal & Wright, Numerical Optimization, 2nd ed., Alg. 7.4 / 7.5 and 3.5 / 3.6):
  d_k = -H_k g_k (two-loop); first iteration d = -g with step min(1, 1/|g|_1) * lr, then lr;
  strong Wolfe: c1 = 1e-4, c2 = 0.9, bracketing by cubic extrapolation within
  [t + 0.01 (t - t_prev), 10 t], zoom by cubic interpolation falling back to bisection when the cubic
  has no minimizer or lands within 10% of an end of the bracket; Armijo: c1 = 1e-4, shrink by the
  quadratic-interpolation factor clamped to [0.1, 0.5]. A pair is stored only when s^T y > 1e-10.
  `max_eval` (default max(max_iter * 5 // 4, max_iter + 1), counting the initial evaluation; torch's
  default without the floor that would leave max_iter = 1 with no step) is a hard per-row cap: a
  line search may use at most the evaluations the row has left (and at most 25).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

C1 = 1e-4
C2 = 0.9
MAX_LS = 25
CURVATURE_EPS = 1e-10

# stop reasons (LBFGSResult.reason)
RUNNING, GRAD, MAX_ITER, MAX_EVAL, STEP, CHANGE, NO_DESCENT, LS_FAIL = range(8)
REASONS = ("running", "grad", "max_iter", "max_eval", "step", "change", "no_descent", "ls_fail")

# line-search phases
_BRACKET, _ZOOM, _DONE = 0, 1, 2


@dataclass
class LBFGSResult:
    x: Tensor
    """(B, n) final points."""
    loss: Tensor
    """(B,) losses at x."""
    grad: Tensor
    """(B, n) gradients at x."""
    n_iter: Tensor
    """(B,) int64 iterations taken."""
    n_eval: Tensor
    """(B,) int64 closure evaluations (the initial one included)."""
    reason: Tensor
    """(B,) int64 stop reason, an index into REASONS."""

    def reasons(self) -> list[str]:
        return [REASONS[int(r)] for r in self.reason.cpu()]


Closure = Callable[[Tensor, Tensor], "Tensor | tuple[Tensor, Tensor]"]


def _rowdot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(-1)


class _Evaluator:
    """Calls the closure on the rows in `mask` and scatters (loss, grad) back into (B,) / (B, n)."""

    def __init__(self, f: Closure, B: int, device, returns_grad: bool):
        self.f = f
        self.B = B
        self.returns_grad = returns_grad
        self.all_rows = torch.arange(B, device=device)

    def __call__(self, X: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        rows = self.all_rows if bool(mask.all()) else mask.nonzero().squeeze(1)
        xs = (X if rows.numel() == self.B else X.index_select(0, rows)).detach()
        if self.returns_grad:
            loss, g = self.f(xs, rows)
        else:
            with torch.enable_grad():
                xr = xs.clone().requires_grad_(True)
                loss = self.f(xr, rows)
                (g,) = torch.autograd.grad(loss.sum(), xr)
        loss = loss.detach().to(X.dtype)
        g = g.detach().to(X.dtype)
        if rows.numel() == self.B:
            return loss, g
        full_l = torch.zeros(self.B, dtype=X.dtype, device=X.device).index_copy(0, rows, loss)
        full_g = torch.zeros_like(X).index_copy(0, rows, g)
        return full_l, full_g


def _cubic_min(t1: Tensor, f1: Tensor, g1: Tensor, t2: Tensor, f2: Tensor, g2: Tensor) -> tuple[Tensor, Tensor]:
    """Minimizer of the cubic matching (f, f') at t1 and t2 (N&W eq. 3.59); -> (t, ok)."""
    d1 = g1 + g2 - 3 * (f1 - f2) / (t1 - t2)
    rad = d1 * d1 - g1 * g2
    d2 = torch.sign(t2 - t1) * rad.clamp_min(0).sqrt()
    t = t2 - (t2 - t1) * (g2 + d2 - d1) / (g2 - g1 + 2 * d2)
    ok = (rad >= 0) & torch.isfinite(t)
    return torch.where(ok, t, torch.zeros_like(t)), ok


def _sel(mask: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Row-wise where for (B,) or (B, n) tensors."""
    return torch.where(mask.view(-1, *([1] * (a.dim() - 1))), a, b)


def _strong_wolfe(ev: _Evaluator, x: Tensor, d: Tensor, t0: Tensor, f0: Tensor, g0: Tensor, gtd0: Tensor,
                  rows: Tensor, budget: Tensor, tolerance_change: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-row strong-Wolfe line search along d for the rows in `rows`.

    -> (t, f, g, evals): t = 0 (and f0, g0) where no acceptable point was found.
    """
    z = torch.zeros_like(f0)
    t = t0.clone()
    phase = torch.where(rows, _BRACKET, _DONE)
    n_ls = torch.zeros_like(budget)
    dmax = d.abs().amax(-1)
    # previous bracketing point (starts at t = 0)
    tp, fp, gp, gtdp = z.clone(), f0.clone(), g0.clone(), gtd0.clone()
    # zoom bracket
    tlo, flo, glo, gtdlo = z.clone(), f0.clone(), g0.clone(), gtd0.clone()
    thi, fhi, gtdhi = z.clone(), f0.clone(), gtd0.clone()
    # result (t = 0: no move)
    tr, fr, gr = z.clone(), f0.clone(), g0.clone()
    # best point seen (for a bracketing phase cut short by the budget)
    tb, fb, gb = z.clone(), f0.clone(), g0.clone()
    while True:
        live = phase != _DONE
        if not bool(live.any()):
            break
        fn, gn = ev(x + t[:, None] * d, live)
        n_ls = n_ls + live.long()
        gtdn = _rowdot(gn, d)
        finite = torch.isfinite(fn) & torch.isfinite(gtdn)
        better = live & finite & (fn < fb)
        tb, fb, gb = _sel(better, t, tb), _sel(better, fn, fb), _sel(better, gn, gb)
        armijo_bad = ~finite | (fn > f0 + C1 * t * gtd0)

        # ---- bracketing rows
        br = live & (phase == _BRACKET)
        to_zoom_a = br & (armijo_bad | ((n_ls > 1) & (fn >= fp)))  # bracket [prev, new]
        curv = br & ~to_zoom_a & (gtdn.abs() <= -C2 * gtd0)
        to_zoom_b = br & ~to_zoom_a & ~curv & (gtdn >= 0)  # bracket [new, prev]
        extrap = br & ~to_zoom_a & ~curv & ~to_zoom_b
        # ---- zoom rows
        zm = live & (phase == _ZOOM)
        z_hi = zm & (armijo_bad | (fn >= flo))
        z_ok = zm & ~z_hi
        z_done = z_ok & (gtdn.abs() <= -C2 * gtd0)
        z_flip = z_ok & ~z_done & (gtdn * (thi - tlo) >= 0)
        z_lo = z_ok & ~z_done

        # results of rows that satisfied the strong Wolfe conditions
        acc = curv | z_done
        tr, fr, gr = _sel(acc, t, tr), _sel(acc, fn, fr), _sel(acc, gn, gr)
        phase = torch.where(acc, _DONE, phase)

        # zoom bracket updates: entering rows
        lo_prev = to_zoom_a
        lo_new = to_zoom_b
        hi_prev = to_zoom_b
        hi_new = to_zoom_a
        # existing zoom rows: new point replaces hi, or becomes lo (old lo -> hi when the slope says so)
        hi_from_lo = z_flip
        hi_new = hi_new | z_hi
        lo_new = lo_new | z_lo
        # order matters: hi <- old lo before lo is overwritten
        thi = _sel(hi_from_lo, tlo, thi)
        fhi = _sel(hi_from_lo, flo, fhi)
        gtdhi = _sel(hi_from_lo, gtdlo, gtdhi)
        thi, fhi, gtdhi = _sel(hi_new, t, thi), _sel(hi_new, fn, fhi), _sel(hi_new, gtdn, gtdhi)
        thi, fhi, gtdhi = _sel(hi_prev, tp, thi), _sel(hi_prev, fp, fhi), _sel(hi_prev, gtdp, gtdhi)
        tlo, flo, glo, gtdlo = (_sel(lo_prev, tp, tlo), _sel(lo_prev, fp, flo), _sel(lo_prev, gp, glo),
                                _sel(lo_prev, gtdp, gtdlo))
        tlo, flo, glo, gtdlo = (_sel(lo_new, t, tlo), _sel(lo_new, fn, flo), _sel(lo_new, gn, glo),
                                _sel(lo_new, gtdn, gtdlo))
        in_zoom = (to_zoom_a | to_zoom_b | (zm & ~z_done))
        phase = torch.where(to_zoom_a | to_zoom_b, _ZOOM, phase)

        # next trial: extrapolation for bracketing rows
        lo_b = t + 0.01 * (t - tp)
        hi_b = 10 * t
        tc, ok = _cubic_min(tp, fp, gtdp, t, fn, gtdn)
        t_ext = torch.where(ok, torch.minimum(torch.maximum(tc, lo_b), hi_b), torch.minimum(2 * t, hi_b))
        tp, fp, gp, gtdp = _sel(extrap, t, tp), _sel(extrap, fn, fp), _sel(extrap, gn, gp), _sel(extrap, gtdn, gtdp)
        # next trial: cubic interpolation inside the zoom bracket, else bisection
        a, b = torch.minimum(tlo, thi), torch.maximum(tlo, thi)
        tz, okz = _cubic_min(tlo, flo, gtdlo, thi, fhi, gtdhi)
        margin = 0.1 * (b - a)
        okz = okz & (tz >= a + margin) & (tz <= b - margin)
        t_zoom = torch.where(okz, tz, 0.5 * (a + b))
        t = torch.where(extrap, t_ext, torch.where(in_zoom, t_zoom, t))

        # stopping: bracket too small, or the row's evaluation budget is spent
        small = in_zoom & ((thi - tlo).abs() * dmax < tolerance_change)
        spent = (phase != _DONE) & (n_ls >= budget)
        end_zoom = (phase == _ZOOM) & (small | spent)
        # a zoom ends at its lo end (lowest loss with sufficient decrease; t = 0 if none was found)
        tr, fr, gr = _sel(end_zoom, tlo, tr), _sel(end_zoom, flo, fr), _sel(end_zoom, glo, gr)
        end_br = (phase == _BRACKET) & spent
        # a bracketing phase cut short keeps the best point seen if it has sufficient decrease
        keep = end_br & (fb <= f0 + C1 * tb * gtd0) & (tb > 0)
        tr, fr, gr = _sel(keep, tb, tr), _sel(keep, fb, fr), _sel(keep, gb, gr)
        phase = torch.where(end_zoom | end_br, _DONE, phase)
    return tr, fr, gr, n_ls


def _armijo(ev: _Evaluator, x: Tensor, d: Tensor, t0: Tensor, f0: Tensor, g0: Tensor, gtd0: Tensor, rows: Tensor,
            budget: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-row backtracking line search (sufficient decrease only). -> (t, f, g, evals); t = 0 on failure."""
    z = torch.zeros_like(f0)
    t = t0.clone()
    live = rows.clone()
    n_ls = torch.zeros_like(budget)
    tr, fr, gr = z.clone(), f0.clone(), g0.clone()
    while bool(live.any()):
        fn, gn = ev(x + t[:, None] * d, live)
        n_ls = n_ls + live.long()
        ok = live & torch.isfinite(fn) & (fn <= f0 + C1 * t * gtd0)
        tr, fr, gr = _sel(ok, t, tr), _sel(ok, fn, fr), _sel(ok, gn, gr)
        # quadratic model through f0, gtd0 and fn: minimizer t * [-gtd0 t / (2 (fn - f0 - gtd0 t))]
        denom = 2 * (fn - f0 - gtd0 * t)
        factor = (-gtd0 * t / denom)
        factor = torch.where(torch.isfinite(factor), factor.clamp(0.1, 0.5), torch.full_like(factor, 0.5))
        t = torch.where(live & ~ok, t * factor, t)
        live = live & ~ok & (n_ls < budget)
    return tr, fr, gr, n_ls


@torch.no_grad()
def lbfgs_batched(f: Closure, x0: Tensor, *, max_iter: int = 20, history_size: int = 10, lr: float = 1.0,
                  tolerance_grad: float = 1e-7, tolerance_change: float = 1e-9, max_eval: int | None = None,
                  line_search: str = "strong_wolfe", returns_grad: bool = False) -> LBFGSResult:
    """Minimize B independent problems; x0 (B, n) holds their starting points (not modified).

    f(X, rows) -> losses (b,), differentiated by autograd; with returns_grad=True f returns
    (losses (b,), grads (b, n)) itself. See the module docstring for the contract.
    max_iter = 0 returns x0 after one evaluation.
    """
    if x0.dim() != 2:
        raise ValueError(f"x0 must be (B, n), got shape {tuple(x0.shape)}")
    if line_search not in ("strong_wolfe", "armijo"):
        raise ValueError(f"line_search must be 'strong_wolfe' or 'armijo', got {line_search!r}")
    if history_size < 1:
        raise ValueError("history_size must be >= 1")
    if max_eval is None:
        max_eval = max(max_iter * 5 // 4, max_iter + 1)
    B, n = x0.shape
    dev, dt = x0.device, x0.dtype
    ev = _Evaluator(f, B, dev, returns_grad)
    x = x0.detach().clone()
    everyone = torch.ones(B, dtype=torch.bool, device=dev)
    loss, g = ev(x, everyone)
    n_eval = torch.ones(B, dtype=torch.long, device=dev)
    n_iter = torch.zeros(B, dtype=torch.long, device=dev)
    reason = torch.zeros(B, dtype=torch.long, device=dev)
    gmax = g.abs().amax(-1)
    reason = torch.where(gmax <= tolerance_grad, GRAD, reason)
    if max_iter <= 0:
        reason = torch.where(reason == RUNNING, MAX_ITER, reason)
    reason = torch.where((reason == RUNNING) & (n_eval >= max_eval), MAX_EVAL, reason)
    m = history_size
    S = torch.zeros(B, m, n, dtype=dt, device=dev)
    Y = torch.zeros(B, m, n, dtype=dt, device=dev)
    rho = torch.zeros(B, m, dtype=dt, device=dev)
    count = torch.zeros(B, dtype=torch.long, device=dev)
    head = torch.zeros(B, dtype=torch.long, device=dev)  # next slot to write
    h_diag = torch.ones(B, dtype=dt, device=dev)
    ar = torch.arange(B, device=dev)
    step = torch.zeros_like(x)  # last step s = t d
    prev_g = g.clone()
    while True:
        active = reason == RUNNING
        if not bool(active.any()):
            break
        # ---- curvature pair from the last step (rows past their first iteration)
        y = g - prev_g
        ys = _rowdot(y, step)
        upd = active & (n_iter > 0) & (ys > CURVATURE_EPS)
        if bool(upd.any()):
            S[ar, head] = _sel(upd, step, S[ar, head])
            Y[ar, head] = _sel(upd, y, Y[ar, head])
            rho[ar, head] = torch.where(upd, 1.0 / ys, rho[ar, head])
            h_diag = torch.where(upd, ys / _rowdot(y, y), h_diag)
            head = torch.where(upd, (head + 1) % m, head)
            count = torch.where(upd, (count + 1).clamp_max(m), count)
        # ---- two-loop recursion, per row over its own history (newest first, then oldest first)
        q = -g
        k = int(count.max())
        alphas = []
        for i in range(k):
            slot = (head - 1 - i) % m
            valid = i < count
            s_i, y_i, r_i = S[ar, slot], Y[ar, slot], rho[ar, slot]
            a_i = torch.where(valid, _rowdot(s_i, q) * r_i, torch.zeros_like(r_i))
            q = q - a_i[:, None] * y_i
            alphas.append(a_i)
        d = q * h_diag[:, None]
        for i in reversed(range(k)):
            slot = (head - 1 - i) % m
            valid = i < count
            s_i, y_i, r_i = S[ar, slot], Y[ar, slot], rho[ar, slot]
            b_i = torch.where(valid, _rowdot(y_i, d) * r_i, torch.zeros_like(r_i))
            d = d + s_i * (alphas[i] - b_i)[:, None]
        # ---- step length and descent check
        gtd = _rowdot(g, d)
        nodesc = active & ~(gtd < -tolerance_change)
        reason = torch.where(nodesc, NO_DESCENT, reason)
        active = active & ~nodesc
        if not bool(active.any()):
            break
        first = n_iter == 0
        t0 = torch.where(first, (1.0 / g.abs().sum(-1)).clamp(max=1.0) * lr, torch.full_like(gtd, lr))
        budget = (max_eval - n_eval).clamp(max=MAX_LS)
        if line_search == "strong_wolfe":
            t, fn, gn, used = _strong_wolfe(ev, x, d, t0, loss, g, gtd, active, budget, tolerance_change)
        else:
            t, fn, gn, used = _armijo(ev, x, d, t0, loss, g, gtd, active, budget)
        n_eval = n_eval + torch.where(active, used, 0)
        n_iter = n_iter + active.long()
        moved = active & (t > 0)
        prev_loss = loss
        prev_g = torch.where(moved[:, None], g, prev_g)
        step = _sel(moved, t[:, None] * d, step)
        x = _sel(moved, x + t[:, None] * d, x)
        loss = _sel(moved, fn, loss)
        g = _sel(moved, gn, g)
        # ---- stopping tests, in order of precedence
        r = torch.full_like(reason, RUNNING)
        r = torch.where((r == RUNNING) & ~moved, LS_FAIL, r)
        r = torch.where((r == RUNNING) & (g.abs().amax(-1) <= tolerance_grad), GRAD, r)
        r = torch.where((r == RUNNING) & (n_iter >= max_iter), MAX_ITER, r)
        r = torch.where((r == RUNNING) & (n_eval >= max_eval), MAX_EVAL, r)
        r = torch.where((r == RUNNING) & (step.abs().amax(-1) <= tolerance_change), STEP, r)
        r = torch.where((r == RUNNING) & ((loss - prev_loss).abs() < tolerance_change), CHANGE, r)
        reason = torch.where(active, r, reason)
    return LBFGSResult(x=x, loss=loss, grad=g, n_iter=n_iter, n_eval=n_eval, reason=reason)
