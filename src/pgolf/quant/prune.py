"""Selective +/-1 pruning to a byte target on the TOTAL submission (docs/DESIGN.md#quant-prune; PR #609's idea, #1019).

Candidates are the entries with |q| = 1 of every matrix stored at quant.matrix_bits (the GPTQ / RTN
matrices). Zeroing one changes its weight by one scale step, so the cost proxy is scale_row^2; the
candidates are ordered by that cost, ascending, ties broken by tensor order then flat index (so the
order is a pure function of the quantized tensors).

size(n) = real artifact bytes with the first n candidates zeroed (encoded with the one compressor
chosen for the unpruned model, so the search compares like with like) + code bytes. Then:
size(0) <= target: nothing is pruned; size(all) > target: everything is pruned and the result is
reported over budget; otherwise a binary search finds the smallest n with size(n) <= target. A
compressor's size is not strictly monotone in n, so the search assumes monotonicity only to choose n;
the returned size is always the measured size of the returned tensors, and the caller checks it.

Target: decimal bytes (default 15,990,000 of the 16,000,000 cap). The original read its 15.9 target as
MiB (16,672,358 bytes, over the cap); this one cannot, the unit is bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch

from pgolf.quant.schemes import QTensor, scheme_bits


def prune_candidates(tensors: Mapping[str, QTensor], bits: int
                     ) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """-> (names, tensor index (N,), flat index (N,), value (N,) in {-1, 1}) of the |q| = 1 entries of every
    `bits`-bit matrix, ordered by scale_row^2 ascending (stable: tensor order, then flat index)."""
    names = [n for n, e in tensors.items() if scheme_bits(QTensor.of(e).scheme) == bits and QTensor.of(e).data.dim() == 2]
    tid, flat, cost, val = [], [], [], []
    for i, n in enumerate(names):
        Q, s = QTensor.of(tensors[n]).data, QTensor.of(tensors[n]).scale
        q = Q.reshape(-1)
        idx = torch.nonzero(q.abs() == 1).reshape(-1)
        rows = idx.numpy() // Q.shape[1]
        tid.append(np.full(idx.shape, i, dtype=np.int64))
        flat.append(idx.numpy().astype(np.int64))
        val.append(q[idx].numpy().astype(np.int64))
        cost.append(s.float().numpy()[rows].astype(np.float64) ** 2)
    if not names:
        z = np.zeros(0, np.int64)
        return [], z, z, z
    tid_a, flat_a, cost_a, val_a = (np.concatenate(x) for x in (tid, flat, cost, val))
    order = np.lexsort((flat_a, tid_a, cost_a))  # last key is primary
    return names, tid_a[order], flat_a[order], val_a[order]


def apply_prune(tensors: Mapping[str, QTensor], names: list[str], tid: np.ndarray, flat: np.ndarray,
                n: int) -> dict[str, QTensor]:
    """A copy of `tensors` with the first n candidates set to 0 (untouched tensors are shared, not copied)."""
    out = dict(tensors)
    for i, name in enumerate(names):
        sel = flat[:n][tid[:n] == i]
        if sel.size == 0:
            continue
        scheme, Q, s = tensors[name]
        Q2 = Q.clone()
        Q2.view(-1)[torch.from_numpy(sel)] = 0
        out[name] = QTensor(scheme, Q2, s)
    return out


class EntropyModel:
    """Order-0 entropy (bytes) of the candidate tensors' symbols after zeroing the first n candidates, in
    O(tensors * 256) per query: the fast size proxy that steers the search (real sizes decide)."""

    def __init__(self, tensors: Mapping[str, QTensor], names: list[str], tid: np.ndarray, val: np.ndarray):
        self.counts = np.stack([np.bincount(QTensor.of(tensors[n]).data.reshape(-1).numpy().astype(np.int64) + 128,
                                            minlength=256) for n in names]) if names else np.zeros((0, 256))
        self.tid, self.val, self.k = tid, val, len(names)

    def __call__(self, n: int) -> float:
        c = self.counts.astype(np.float64).copy()
        plus = np.bincount(self.tid[:n][self.val[:n] > 0], minlength=self.k)
        minus = np.bincount(self.tid[:n][self.val[:n] < 0], minlength=self.k)
        c[:, 129] -= plus
        c[:, 127] -= minus
        c[:, 128] += plus + minus
        tot = c.sum(axis=1, keepdims=True)
        p = np.where(c > 0, c / np.maximum(tot, 1), 1.0)
        return float(-(c * np.log2(p)).sum() / 8.0)


def prune_to_target(tensors: Mapping[str, QTensor], bits: int, size_fn: Callable[[Mapping[str, QTensor]], int],
                    target: int, *, max_evals: int = 12, rel_tol: float = 0.002,
                    progress=None) -> tuple[dict[str, QTensor], dict]:
    """-> (tensors to store, info). size_fn(tensors) = total counted bytes (artifact + code).

    Real sizes are expensive (one full compression each: tens of seconds at record scale), so the search
    is steered by the entropy proxy: each step predicts, from the proxy rescaled to the last measured
    point, the smallest n that fits, measures it, and tightens the bracket [lo (too big), hi (fits)];
    when a prediction falls outside the bracket it bisects. It stops when hi - lo <= rel_tol * N (at most
    that fraction of candidates pruned beyond the minimum) or after max_evals real sizes; the answer is
    always a measured n that fits (or all candidates, reported as not fitting).

    info: {"target", "candidates", "pruned", "size_before", "size", "evaluations", "within_target"}.
    """
    names, tid, flat, val = prune_candidates(tensors, bits)
    N = int(tid.size)
    sizes: dict[int, int] = {}

    def f(n: int) -> int:
        if n not in sizes:
            sizes[n] = int(size_fn(apply_prune(tensors, names, tid, flat, n)))
            if progress is not None:
                progress(n, sizes[n])
        return sizes[n]

    info = {"target": int(target), "candidates": N, "size_before": f(0)}
    if sizes[0] <= target or N == 0:
        n = 0
    else:
        est = EntropyModel(tensors, names, tid, val)
        e0 = est(0)
        lo, hi = 0, None  # f(lo) > target; f(hi) <= target once found
        last = 0
        tol = max(1, int(rel_tol * N))
        while len(sizes) < max_evals and (hi is None or hi - lo > tol):
            # proxy rescaled to the last measurement: size(n) ~ f(last) + r * (est(n) - est(last))
            r = (f(last) - f(0) + 1e-9) / (est(last) - e0 - 1e-9) if last else f(0) / max(e0, 1.0)
            r = max(r, 1e-3)
            need = (f(last) - target) / r  # entropy bytes to remove beyond `last`
            goal = est(last) - need
            a, b = lo, N if hi is None else hi
            while b - a > 1:  # smallest n in (lo, hi] with est(n) <= goal (est falls with n)
                m = (a + b) // 2
                if est(m) <= goal:
                    b = m
                else:
                    a = m
            guess = b
            if guess <= lo or (hi is not None and guess >= hi):
                guess = (lo + (hi if hi is not None else N) + 1) // 2
            if guess in sizes:  # lo == N: even pruning everything does not fit
                break
            last = guess
            if f(guess) <= target:
                hi = guess
            else:
                lo = guess
        n = N if hi is None else hi  # nothing fit within max_evals: prune everything (f(N) is measured below)
    info.update(pruned=n, size=f(n), evaluations=len(sizes), within_target=f(n) <= target)
    return apply_prune(tensors, names, tid, flat, n), info
