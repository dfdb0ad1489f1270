"""Full-Hessian GPTQ on a symmetric per-row grid (docs/DESIGN.md#quant-gptq; Frantar et al. 2022, arXiv 2210.17323).

`gptq_quantize` is a pure tensor function (no model, no hooks, no globals) and `gptq_reference` is its
slow twin (docs/DESIGN.md#house-rules): the same math column by column in float64 with every update
applied immediately. tests/parity/test_gptq_reference.py holds them against each other.

Names follow the paper (Algorithm 1) and IST-DASLab/gptq:

    W      (rows, cols) weights; rows = outputs, cols = inputs (the paper's d_row x d_col)
    H      (cols, cols) Hessian of the layer-wise loss, here sum X^T X / n (the paper's 2 X X^T up to
           a constant factor, which cancels); X = (tokens, cols) inputs of the matmul
    Hinv   upper Cholesky factor of H^-1 (the paper's "Cholesky(H^-1)^T"): row j holds the OBS update
           direction for the columns after j; Hinv[j, j] is the paper's [H_F^-1]_qq^(1/2)
    Q      grid integers (the paper quantizes to Q = s * q; we keep q and s apart)
    Err    (rows, B) scaled quantization errors of one block, (w - q s) / Hinv[j, j] (the paper's E)
    B      block size of the lazy batch updates (paper: B = 128)
    s      per-row fp16 scales of the grid (`pgolf.quant.grid`)

Steps (docs/DESIGN.md#quant-gptq): dead inputs (diag H = 0) get H_jj = 1 and a zero weight column; damping
damp * mean(diag H) on the diagonal; act-order (columns by descending diag H); Hinv; for every clip
candidate run blocked GPTQ; keep the candidate with the lowest plain weight MSE; undo the permutation.
The Hessian collector (`pgolf.quant.hessian`) returns undamped H, so H is damped once, here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor

from pgolf.quant.grid import candidate_scales, qmax_for, weight_mse


@contextlib.contextmanager
def _no_tf32() -> Iterator[None]:
    """Full fp32 matmuls for the solve (IST-DASLab/gptq disables TF32 for numerics), restored after."""
    prev = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(prev)


def _prepare(W: Tensor, H: Tensor, damp: float, act_order: bool, work: torch.dtype
             ) -> tuple[Tensor, Tensor, Tensor | None]:
    """Dead columns, damping, act-order -> (W, H, perm) in `work` dtype (copies; inputs untouched)."""
    rows, cols = W.shape
    if H.shape != (cols, cols):
        raise ValueError(f"H must be ({cols}, {cols}) for W of shape {tuple(W.shape)}, got {tuple(H.shape)}")
    W = W.detach().to(work).clone()
    H = H.detach().to(device=W.device, dtype=work).clone()
    dead = torch.diag(H) == 0  # inputs that never fire: nothing to preserve, nothing to compensate
    H[dead, dead] = 1
    W[:, dead] = 0
    mean_diag = torch.mean(torch.diag(H))
    H.diagonal().add_(damp * mean_diag)
    perm = None
    if act_order:
        perm = torch.argsort(torch.diag(H), descending=True, stable=True)
        W = W[:, perm]
        H = H[perm][:, perm]
    return W, H, perm


def _upper_cholesky_of_inverse(H: Tensor) -> Tensor:
    """Upper U with U^T U = H^-1 (Cholesky of H, inverse via Cholesky, then upper Cholesky)."""
    L, info = torch.linalg.cholesky_ex(H)
    if int(info) != 0:
        raise ValueError("GPTQ: the damped Hessian is not positive definite; increase quant.damp")
    Hinv = torch.cholesky_inverse(L)
    U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
    if int(info) != 0:
        raise ValueError("GPTQ: H^-1 is not positive definite in this precision; increase quant.damp")
    return U


def select_candidates(W: Tensor, Q: Tensor, S: Tensor, H: Tensor, select: str) -> tuple[Tensor, Tensor]:
    """Pick among C candidate quantizations Q (C, rows, cols) with scales S (C, rows) of W (rows, cols):

    - "matrix" (the original, docs/DESIGN.md#quant-gptq step 7): the candidate with the lowest plain weight MSE over
      the whole matrix (earliest on ties);
    - "row": per row, the candidate with the lowest layer-output error d H d^T, d = w_r - q_r s_r (rows
      are independent in GPTQ, so mixing candidates across rows is exact; earliest on ties). With H = I
      this is the per-row weight error, which `rtn_quantize(select="row")` uses.
    Errors are summed in float64. -> (Q (rows, cols), scales (rows,)).
    """
    if select == "matrix":
        mses = [weight_mse(W, Q[c], S[c]) for c in range(S.size(0))]
        best = min(range(S.size(0)), key=lambda c: (mses[c], c))
        return Q[best], S[best].clone()
    if select != "row":
        raise ValueError(f"select must be 'matrix' or 'row', got {select!r}")
    D = W.double()[None] - Q.double() * S.double()[:, :, None]  # (C, rows, cols)
    err = ((D @ H.double()) * D).sum(-1)  # (C, rows)
    idx = torch.argmin(err, dim=0)  # (rows,): first minimum on ties
    rows = torch.arange(W.size(0), device=W.device)
    return Q[idx, rows], S[idx, rows].clone()


def gptq_quantize(W: Tensor, H: Tensor, *, bits: int, block_size: int = 128, damp: float = 0.01,
                  act_order: bool = True, clip: str = "percentile", sdclip_k: float = 12.85,
                  scale_floor: float = 1e-8, select: str = "matrix") -> tuple[Tensor, Tensor]:
    """GPTQ W (rows, cols) with Hessian H (cols, cols) -> (Q int8 (rows, cols), scales fp16 (rows,)).

    Works in fp32 (fp64 when W is fp64) on W's device, TF32 off. All clip candidates run as one batch
    (a leading candidate dim C on W, Q, Err); they share Hinv, so this is C independent GPTQ runs.
    select: how the clip candidate is chosen (`select_candidates`; "row" uses the damped H).
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    work = torch.float64 if W.dtype == torch.float64 else torch.float32
    qmax = qmax_for(bits)
    with _no_tf32(), torch.no_grad():
        W, H, perm = _prepare(W, H, damp, act_order, work)
        rows, cols = W.shape
        Hinv = _upper_cholesky_of_inverse(H)  # (cols, cols) upper
        # Column permutation does not change per-row quantiles, so candidates come from the permuted W.
        S = candidate_scales(W, bits, clip, sdclip_k, scale_floor)  # (C, rows) fp16
        s = S.to(work)[:, :, None]  # (C, rows, 1)
        C = S.size(0)
        Wc = W.expand(C, rows, cols).clone()  # (C, rows, cols): the running, error-compensated weights
        Q = torch.zeros(C, rows, cols, dtype=work, device=W.device)
        for i1 in range(0, cols, block_size):
            i2 = min(i1 + block_size, cols)
            W1 = Wc[:, :, i1:i2].clone()  # (C, rows, B)
            Err1 = torch.zeros_like(W1)
            Hinv1 = Hinv[i1:i2, i1:i2]  # (B, B)
            for i in range(i2 - i1):
                w = W1[:, :, i : i + 1]  # (C, rows, 1)
                q = torch.clamp(torch.round(w / s), -qmax, qmax)
                Q[:, :, i1 + i : i1 + i + 1] = q
                err = (w - q * s) / Hinv1[i, i]  # (C, rows, 1)
                W1[:, :, i:] -= err * Hinv1[i, i:]  # lazy: only inside the block
                Err1[:, :, i : i + 1] = err
            Wc[:, :, i2:] -= Err1 @ Hinv[i1:i2, i2:]  # (C, rows, B) @ (B, cols - i2): the deferred update
        Qb, Sb = select_candidates(W, Q, S, H, select)
        Qb = Qb.to(torch.int8)
        if perm is not None:
            Qb = Qb[:, torch.argsort(perm)]
        return Qb, Sb


def gptq_reference(W: Tensor, H: Tensor, *, bits: int, damp: float = 0.01, act_order: bool = True,
                   clip: str = "percentile", sdclip_k: float = 12.85, scale_floor: float = 1e-8,
                   select: str = "matrix") -> tuple[Tensor, Tensor]:
    """Slow twin of `gptq_quantize`: float64, one column at a time, every update applied at once.

    For column j: q_j = clamp(round(w_j / s)), e_j = (w_j - q_j s) / U_jj, then w_k -= e_j U_jk for all
    k > j (the OBS update restricted to the not-yet-quantized columns, GPTQ eq. (3) with Cholesky rows).
    Candidates run one after another; the lowest plain weight MSE wins (earliest on ties).
    """
    qmax = qmax_for(bits)
    W64, H64, perm = _prepare(W.detach().cpu(), H.detach().cpu(), damp, act_order, torch.float64)
    rows, cols = W64.shape
    U = torch.linalg.cholesky(torch.linalg.inv(H64), upper=True)
    S = candidate_scales(W64, bits, clip, sdclip_k, scale_floor)  # (C, rows) fp16
    Qs = []
    for s16 in S:
        s = s16.double()
        Wk = W64.clone()
        Q = torch.zeros(rows, cols, dtype=torch.float64)
        for j in range(cols):
            q = torch.clamp(torch.round(Wk[:, j] / s), -qmax, qmax)
            Q[:, j] = q
            e = (Wk[:, j] - q * s) / U[j, j]
            Wk[:, j + 1 :] -= e[:, None] * U[j, j + 1 :][None, :]
        Qs.append(Q)
    Qb, Sb = select_candidates(W64, torch.stack(Qs), S, H64, select)
    Qb = Qb.to(torch.int8)
    if perm is not None:
        Qb = Qb[:, torch.argsort(perm)]
    return Qb, Sb


def output_error(W: Tensor, Q: Tensor, scales: Tensor, H: Tensor) -> float:
    """Layer output error sum_tokens ||(W - Q s) x||^2 / n = trace(D H D^T), D = W - Q s, in float64."""
    D = W.double() - Q.double() * scales.double()[:, None]  # (rows, cols)
    return float(((D @ H.double()) * D).sum())
