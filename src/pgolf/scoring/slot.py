"""Causal SLOT: a per-window bias fitted on the window's own already-scored targets (docs/DESIGN.md#slot-legality).

For every batch of sliding windows (one `ScorePlan`):
1. One frozen forward (no grad; autocast if asked) -> the final hidden state h; logits L = head(h) in
   at least fp32, only on the relative positions the batch needs (from the first adaptation position
   to the window end, i.e. the last focal + S positions of a full window).
2. Window w gets its own delta (shape (V,) in logit space, (D,) in hidden space), fitted by the
   batched L-BFGS (`lbfgs.py`: per-window history, step, line search; nothing is shared between
   windows) on the mean NLL of ITS positions [max(0, score_from - focal), score_from) (all of
   [0, score_from) when focal = 0). Those targets precede the window's scored region and were
   scored by earlier windows. A window with no such positions (the first window) keeps its start.
3. Phases (`SlotConfig.phase_iters` / `phase_history`): each phase is a fresh L-BFGS (empty memory)
   started from the previous phase's delta. Phase loss weights: alpha = 0 uniform; alpha > 0:
   w = (1 - alpha) + alpha * u / mean(u), u = 1 - p(target) at the phase's starting delta, computed
   on the window's own adaptation positions only.
4. Clamp: delta is clamped to [-clamp, clamp] elementwise after EVERY phase (the later phases start
   from a clamped point; for one phase this is the end-of-fit clamp of the original entry).
   Penalty (`l2` > 0): each phase minimizes mean NLL + l2 / 2 * |delta|^2 (= l2 * n / 2 * |delta|^2 on
   the NLL summed over the n fitted positions), on rows that have positions to fit.
5. Guard (`guard` = check / never_keep): steps 2-4 see only the EARLIER part of the window's adaptation
   positions; the later `guard_frac` of them are the check positions. Of the candidates s * delta
   (s in `guard_shrink`) the one with the lowest mean check NLL is kept if it beats delta = 0 by more
   than `guard_margin` (and, with `guard_z` > 0, by more than guard_z standard errors of the per-position
   change), else the window is scored with delta = 0, which is exactly sliding (never_keep:
   always delta = 0). `guard_refit` refits a kept window on all its adaptation positions and scores
   with s * (refit delta). Both parts are adaptation positions, i.e. targets already scored by earlier
   windows, so the decision never reads the window's own scored targets.
6. Score the window's scored positions with log_softmax(L + delta) over the full vocabulary (hidden
   space: log_softmax(head(h + delta))); the bias is added after the logit softcap in logit space.
7. `within_doc`: fit only on positions of the first scored target's document (BOS count of the inputs);
   later-document targets, and windows with nothing to fit, get delta 0 (reads inputs up to t only).

Warm start: batch k starts from the mean (warm_from="last": the last) of batch k-1's scored deltas, all
fitted before batch k's first scored target. World-size invariance: batches and warm-start segments are
functions of the plan alone and ranks take whole segments. coupling="shared" is the withdrawn entry's
NON-COMPLIANT batch-shared delta (research only). Why each is legal or not: docs/DESIGN.md#slot-legality.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pgolf.config import SlotConfig
from pgolf.data.tokenizer import target_bytes_torch
from pgolf.runtime import DistEnv, autocast, rank_share
from pgolf.scoring.bpb import SCORED_TAP, Score, ScoreAccumulator
from pgolf.scoring.lbfgs import lbfgs_batched
from pgolf.scoring.modes import label_for
from pgolf.scoring.plan import ScorePlan
from pgolf.scoring.sliding import window_batch

TOLERANCE_GRAD = 1e-7
TOLERANCE_CHANGE = 1e-9


def segments(lo: int, hi: int, batch_windows: int, n_segments: int) -> list[tuple[int, int]]:
    """Cut windows [lo, hi) into batches of batch_windows (from lo), then the batches into n_segments
    contiguous groups; -> the non-empty groups as window ranges."""
    nb = -(-(hi - lo) // batch_windows)
    out = []
    for s in range(n_segments):
        b0, b1 = nb * s // n_segments, nb * (s + 1) // n_segments
        if b1 > b0:
            out.append((lo + b0 * batch_windows, min(lo + b1 * batch_windows, hi)))
    return out


def rank_segments(segs: list[tuple[int, int]], env: DistEnv) -> list[tuple[int, int]]:
    """This rank's contiguous share of whole segments."""
    a, b = rank_share(0, len(segs), env)
    return segs[a:b]


@dataclass
class _Batch:
    x: Tensor  # (B, P) inputs at the kept positions [a, a + P)
    y: Tensor  # (B, P) targets at the kept positions
    a: int  # first relative position kept
    base: Tensor  # (B, P, V) logits (logit space) or (B, P, D) hidden states, positions [a, a + P)
    base_adapt: Tensor  # the same from the adaptation path's stream (== base unless adapt_stream is set)
    y_adapt: Tensor  # (B, P) targets from the adaptation path's stream
    opt_idx: Tensor  # (B, Po) relative (to a) positions of the adaptation targets (padded)
    opt_mask: Tensor  # (B, Po) bool
    score_mask: Tensor  # (B, P) bool
    starts: Tensor  # (B,) window starts
    same_doc: Tensor | None  # (B, P) bool: the position's target is in the document of the first scored one


class SlotRunner:
    """Scores windows with causal SLOT; one instance per (model state, stream, plan)."""

    def __init__(self, model: torch.nn.Module, stream: np.ndarray, plan: ScorePlan, luts_t: dict,
                 cfg: SlotConfig, device: torch.device, *, autocast_dtype: torch.dtype | None = None,
                 nll_out: np.ndarray | None = None, warm_from: str = "mean", adapt_stream: np.ndarray | None = None):
        if warm_from not in ("mean", "last"):
            raise ValueError(f"warm_from must be 'mean' or 'last', got {warm_from!r}")
        self.model, self.stream, self.plan, self.luts_t, self.cfg = model, stream, plan, luts_t, cfg
        self.device, self.autocast_dtype, self.nll_out, self.warm_from = device, autocast_dtype, nll_out, warm_from
        # Test hook (docs/DESIGN.md#leak-tests self-prediction test): a stream used ONLY by the adaptation path (the
        # forward that feeds the delta fit, and its targets); scoring always reads `stream`.
        self.adapt_stream = adapt_stream
        self.shared = cfg.coupling == "shared"
        self.hidden = cfg.space == "hidden"
        n_ph = len(cfg.phase_iters)
        # float64 stats: windows, adapted windows, opt-NLL before/after, per phase (iters, evals), batches
        self.stats = torch.zeros(5 + 2 * n_ph, dtype=torch.float64)
        # float64 guard stats: windows kept, windows checked, check NLL at delta 0 / at the scored delta
        # (sums over checked windows), then windows kept per shrink factor
        self.guard_stats = torch.zeros(4 + len(cfg.guard_shrink), dtype=torch.float64)
        self.last_kept: Tensor | None = None  # (B,) bool of the last batch: scored with its fitted delta

    # ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _prepare(self, idx: range) -> _Batch:
        plan, cfg = self.plan, self.cfg
        x, y, _ = window_batch(self.stream, plan, idx, self.device)
        sf = plan.score_from[idx.start:idx.stop]
        wl = plan.wlen[idx.start:idx.stop]
        olo = np.maximum(0, sf - cfg.focal) if cfg.focal > 0 else np.zeros_like(sf)
        a, c = int(olo.min()), int(wl.max())
        base = self._frozen(x, a, c)
        if self.adapt_stream is None:
            base_a, y_a = base, y
        else:
            xa, y_a, _ = window_batch(self.adapt_stream, plan, idx, self.device)
            base_a = self._frozen(xa, a, c)
        B, P = base.shape[:2]
        cnt = sf - olo
        po = max(1, int(cnt.max()))
        j = np.arange(po)[None, :]
        opt_mask = j < cnt[:, None]
        opt_idx = np.where(opt_mask, olo[:, None] - a + j, 0)
        rel = np.arange(a, c)[None, :]
        score_mask = (rel >= sf[:, None]) & (rel < wl[:, None])
        t = lambda v: torch.as_tensor(v, device=self.device)  # noqa: E731
        opt_idx_t, opt_mask_t, same = t(opt_idx), t(opt_mask), None
        if cfg.within_doc:
            # document of each position's target: the number of BOS inputs up to and including it (a BOS input
            # predicts its document's first token), read from the inputs only
            seg = torch.cumsum((x == self.model.cfg.bos_id).to(torch.int32), dim=1)[:, a:c]
            ref = seg.gather(1, t(sf - a)[:, None].long())  # the document of the first scored target
            same = seg == ref
            opt_mask_t = opt_mask_t & same.gather(1, opt_idx_t.long())
        return _Batch(x[:, a:c], y[:, a:c], a, base, base_a, y_a[:, a:c], opt_idx_t, opt_mask_t, t(score_mask),
                      t(plan.starts[idx.start:idx.stop]), same)

    def _frozen(self, x: Tensor, a: int, c: int) -> Tensor:
        """The frozen forward on positions [a, c): hidden states or logits, at least fp32."""
        with autocast(self.device, self.autocast_dtype):
            h = self.model.forward_hidden(x)[:, a:c]
            base = h if self.hidden else self.model.logits_from_hidden(h)
        return base.to(torch.promote_types(base.dtype, torch.float32))

    def _logits(self, base: Tensor, delta: Tensor) -> Tensor:
        """base (b, p, K), delta (b, K) -> logits (b, p, V)."""
        z = base + delta[:, None, :]
        return self.model.logits_from_hidden(z) if self.hidden else z

    # ------------------------------------------------------------------------------------------------
    def _phase_weights(self, bo: Tensor, yo: Tensor, mask: Tensor, delta: Tensor, alpha: float) -> Tensor:
        """Per-row normalized loss weights (B, Po), each row summing to 1 over its own positions."""
        m = mask.to(bo.dtype)
        if alpha > 0:
            with torch.no_grad():
                p = self._logits(bo, delta).softmax(-1).gather(-1, yo[..., None])[..., 0]
            u = (1 - p) * m
            mean_u = u.sum(-1, keepdim=True) / m.sum(-1, keepdim=True).clamp_min(1)
            un = torch.where(mean_u > 0, u / mean_u.clamp_min(torch.finfo(u.dtype).tiny), m)
            m = ((1 - alpha) + alpha * un) * m
        return m / m.sum(-1, keepdim=True).clamp_min(torch.finfo(m.dtype).tiny)

    def _fit_per_window(self, bo: Tensor, yo: Tensor, mask: Tensor, delta: Tensor) -> Tensor:
        cfg = self.cfg
        n_ph = len(cfg.phase_iters)
        # L2 penalty l2 / 2 * |delta|^2 on the mean NLL, only on rows that have positions to fit (a row
        # without any keeps its start); l2 = 0 leaves the objective untouched (bitwise the unpenalized fit)
        lam = cfg.l2 * mask.any(-1).to(bo.dtype) if cfg.l2 > 0 else None
        for k, (iters, hist, alpha) in enumerate(zip(cfg.phase_iters, cfg.phase_history, cfg.phase_alpha)):
            w = self._phase_weights(bo, yo, mask, delta, alpha)
            if self.hidden:
                def f(D, rows, w=w):
                    z = self._logits(bo if rows.numel() == bo.size(0) else bo[rows], D)
                    nll = torch.logsumexp(z, -1) - z.gather(-1, yo[rows][..., None])[..., 0]
                    loss = (w[rows] * nll).sum(-1)
                    return loss if lam is None else loss + 0.5 * lam[rows] * (D * D).sum(-1)
                res = lbfgs_batched(f, delta, max_iter=iters, history_size=hist, lr=cfg.lr,
                                    tolerance_grad=TOLERANCE_GRAD, tolerance_change=TOLERANCE_CHANGE,
                                    line_search=cfg.line_search)
            else:
                def f(D, rows, w=w):
                    full = rows.numel() == bo.size(0)
                    z = (bo if full else bo[rows]) + D[:, None, :]
                    yr, wr = (yo, w) if full else (yo[rows], w[rows])
                    lse = torch.logsumexp(z, -1)
                    nll = lse - z.gather(-1, yr[..., None])[..., 0]
                    loss = (wr * nll).sum(-1)
                    sm = torch.exp(z - lse[..., None])
                    g = (wr[..., None] * sm).sum(1)
                    g = g.scatter_add(-1, yr, -wr)
                    if lam is not None:
                        lam_r = lam if full else lam[rows]
                        loss, g = loss + 0.5 * lam_r * (D * D).sum(-1), g + lam_r[:, None] * D
                    return loss, g
                res = lbfgs_batched(f, delta, max_iter=iters, history_size=hist, lr=cfg.lr,
                                    tolerance_grad=TOLERANCE_GRAD, tolerance_change=TOLERANCE_CHANGE,
                                    line_search=cfg.line_search, returns_grad=True)
            delta = res.x.clamp(-cfg.clamp, cfg.clamp)
            adapted = mask.any(-1)
            self.stats[4 + k] += float(res.n_iter[adapted].sum())
            self.stats[4 + n_ph + k] += float(res.n_eval[adapted].sum())
        return delta

    def _fit_shared(self, bo: Tensor, yo: Tensor, mask: Tensor, delta: Tensor) -> Tensor:
        """NON-COMPLIANT reference: one delta for the batch, torch.optim.LBFGS on the batch-mean loss."""
        cfg = self.cfg
        n_ph = len(cfg.phase_iters)
        d = delta[:1].clone()  # the batch's shared delta (all rows equal)
        if not bool(mask.any()):
            return d.expand_as(delta).clone()
        for k, (iters, hist, alpha) in enumerate(zip(cfg.phase_iters, cfg.phase_history, cfg.phase_alpha)):
            w = self._phase_weights(bo, yo, mask, d.expand_as(delta), alpha) * mask.sum(-1, keepdim=True)
            w = w / w.sum()  # one weighted mean over every adaptation position of the batch
            p = d.clone().requires_grad_(True)
            opt = torch.optim.LBFGS([p], lr=cfg.lr, max_iter=iters, history_size=hist,
                                    tolerance_grad=TOLERANCE_GRAD, tolerance_change=TOLERANCE_CHANGE,
                                    line_search_fn="strong_wolfe" if cfg.line_search == "strong_wolfe" else None)
            n_eval = [0]

            def closure(p=p, opt=opt, w=w, n_eval=n_eval):
                opt.zero_grad()
                with torch.enable_grad():
                    z = self._logits(bo, p.expand(bo.size(0), -1))
                    nll = torch.logsumexp(z, -1) - z.gather(-1, yo[..., None])[..., 0]
                    loss = (w * nll).sum()
                    if cfg.l2 > 0:
                        loss = loss + 0.5 * cfg.l2 * (p * p).sum()
                    loss.backward()
                n_eval[0] += 1
                return loss

            opt.step(closure)
            d = p.detach().clamp(-cfg.clamp, cfg.clamp)
            self.stats[4 + k] += float(opt.state[p].get("n_iter", 0))
            self.stats[4 + n_ph + k] += float(n_eval[0])
        return d.expand_as(delta).clone()

    # ------------------------------------------------------------------------------------------------
    def score_batch(self, idx: range, delta0: Tensor | None, acc: ScoreAccumulator) -> Tensor:
        """Adapt and score windows idx; delta0 (K,) warm start or None (zeros). -> final deltas (B, K)."""
        bt = self._prepare(idx)
        B, _, K = bt.base.shape
        dtype = bt.base.dtype
        delta = torch.zeros(B, K, dtype=dtype, device=self.device)
        if delta0 is not None:
            delta = delta + delta0.to(dtype)[None, :]
        gi = bt.opt_idx[..., None].expand(-1, -1, K)
        bo = bt.base_adapt.gather(1, gi)  # (B, Po, K): adaptation positions only
        yo = bt.y_adapt.gather(1, bt.opt_idx)  # (B, Po)
        mask = bt.opt_mask
        with torch.no_grad():
            nll0 = self._opt_nll(bo, yo, mask, delta)
        delta = self._guarded_fit(bo, yo, mask, delta)
        if bt.same_doc is not None:  # a window with no position of its document to fit on is not adapted
            delta = torch.where(mask.any(-1)[:, None], delta, torch.zeros_like(delta))
        with torch.no_grad():
            nll1 = self._opt_nll(bo, yo, mask, delta)
            adapted = mask.any(-1)
            self.stats[0] += B
            self.stats[-1] += 1
            self.stats[1] += float(adapted.sum())
            self.stats[2] += float(nll0[adapted].sum())
            self.stats[3] += float(nll1[adapted].sum())
            # ---- score: full softmax of L + delta on the scored positions
            sel = bt.score_mask
            rows = sel.nonzero()[:, 0]
            d = delta[rows]
            if bt.same_doc is not None:  # targets of a later document than the first scored one: delta 0
                d = torch.where(bt.same_doc[sel][:, None], d, torch.zeros_like(d))
            z = self._logits(bt.base[sel][:, None, :], d)[:, 0]  # (n, V)
            tgt = bt.y[sel]
            prev = bt.x[sel]
            logp = F.log_softmax(z, -1)
            nll = -logp.gather(-1, tgt[:, None])[:, 0]
            acc.add(nll, target_bytes_torch(self.luts_t, prev, tgt))
            if self.nll_out is not None:
                pos = (bt.starts[:, None] + bt.a + torch.arange(sel.size(1), device=self.device)[None, :])[sel]
                self.nll_out[pos.cpu().numpy()] = nll.double().cpu().numpy()
                if (tap := SCORED_TAP.get()) is not None:
                    tap(pos, logp)
        return delta

    def _guarded_fit(self, bo: Tensor, yo: Tensor, mask: Tensor, delta0: Tensor) -> Tensor:
        """The fit, then (guard != off) the per-window check on already-scored positions. -> scored deltas.

        Row r's adaptation positions are j < n_r (earliest first); the check holds out the last
        c_r = min(n_r - 1, max(1, floor(guard_frac * n_r))) of them, the fit sees the first n_r - c_r. The
        decision reads only row r's own adaptation targets, all before its scored region."""
        cfg = self.cfg
        fit = self._fit_shared if self.shared else self._fit_per_window
        if cfg.guard == "off":
            delta = fit(bo, yo, mask, delta0)
            self.last_kept = mask.any(-1)
            self.guard_stats[0] += float(self.last_kept.sum())
            return delta
        cnt = mask.sum(-1)
        n_check = torch.minimum((cnt.to(torch.float64) * cfg.guard_frac).floor().long().clamp_min(1), cnt - 1)
        checked = cnt >= 2
        fit_mask = mask & (torch.arange(mask.size(1), device=mask.device)[None, :] < (cnt - n_check)[:, None])
        check_mask = mask & ~fit_mask & checked[:, None]
        d_fit = fit(bo, yo, fit_mask, delta0)
        factors = torch.tensor(cfg.guard_shrink, dtype=d_fit.dtype, device=d_fit.device)
        with torch.no_grad():  # per-position NLLs at delta 0 and at each candidate, computed once
            m = check_mask.to(d_fit.dtype)
            p0 = self._pos_nll(bo, yo, torch.zeros_like(d_fit))
            pc = torch.stack([self._pos_nll(bo, yo, s * d_fit) for s in cfg.guard_shrink])
            ref = (p0 * m).sum(-1) / m.sum(-1).clamp_min(1)
            best, k = ((pc * m).sum(-1) / m.sum(-1).clamp_min(1)).min(0)  # ties: the first (largest) factor
            kept = checked & (best < ref - cfg.guard_margin)
            if cfg.guard_z > 0:  # the gain must also stand guard_z standard errors clear of zero
                kept = kept & self._confident(pc[k, torch.arange(k.numel(), device=k.device)] - p0, check_mask)
            if cfg.guard == "never_keep":
                kept = torch.zeros_like(kept)
        d = d_fit
        if cfg.guard_refit and bool(kept.any()):
            if self.shared:
                d = fit(bo, yo, mask, delta0)
            else:  # only the kept rows (rows are independent problems)
                rows = kept.nonzero()[:, 0]
                d = d_fit.index_copy(0, rows, fit(bo[rows], yo[rows], mask[rows], delta0[rows]))
        delta = torch.where(kept[:, None], factors[k][:, None] * d, torch.zeros_like(d))
        self.last_kept = kept
        gs = self.guard_stats
        gs[0] += float(kept.sum())
        gs[1] += float(checked.sum())
        gs[2] += float(ref[checked].sum())
        gs[3] += float(torch.where(kept, best, ref)[checked].sum())
        gs[4:] += torch.bincount(k[kept].cpu(), minlength=len(cfg.guard_shrink)).to(torch.float64)
        return delta

    def _pos_nll(self, bo: Tensor, yo: Tensor, delta: Tensor) -> Tensor:
        """(B, Po) NLL of every adaptation position (padding included) under the window's delta."""
        z = self._logits(bo, delta)
        return torch.logsumexp(z, -1) - z.gather(-1, yo[..., None])[..., 0]

    def _opt_nll(self, bo: Tensor, yo: Tensor, mask: Tensor, delta: Tensor) -> Tensor:
        """Per-window mean NLL on its adaptation positions (0 where it has none)."""
        nll = self._pos_nll(bo, yo, delta)
        m = mask.to(nll.dtype)
        return (nll * m).sum(-1) / m.sum(-1).clamp_min(1)

    def _confident(self, d: Tensor, check_mask: Tensor) -> Tensor:
        """(B,) bool: the per-position NLL change d = nll(delta) - nll(0) (B, Po) over the c check positions
        has mean(d) + guard_z * sd(d) / sqrt(c) < -guard_margin (sd with c - 1 degrees of freedom; c < 2: False)."""
        m = check_mask.to(d.dtype)
        c = m.sum(-1)
        mean = (d * m).sum(-1) / c.clamp_min(1)
        var = (((d - mean[:, None]) ** 2) * m).sum(-1) / (c - 1).clamp_min(1)
        se = (var / c.clamp_min(1)).sqrt()
        return (c >= 2) & (mean + self.cfg.guard_z * se < -self.cfg.guard_margin)

    def score_segment(self, lo: int, hi: int, batch_windows: int, acc: ScoreAccumulator, progress=None) -> None:
        """Windows [lo, hi) in batches of batch_windows, the warm start chained from batch to batch."""
        warm = None
        for b in range(lo, hi, batch_windows):
            idx = range(b, min(b + batch_windows, hi))
            final = self.score_batch(idx, warm if self.cfg.warm_start else None, acc)
            warm = final.mean(0) if self.warm_from == "mean" else final[-1]
            if progress is not None:
                progress.update(len(idx))

    def score_range(self, lo: int, hi: int, env: DistEnv, batch_windows: int, warm_segments: int,
                    acc: ScoreAccumulator, progress=None) -> None:
        """This rank's share (whole warm-start segments) of windows [lo, hi)."""
        for s0, s1 in rank_segments(segments(lo, hi, batch_windows, warm_segments), env):
            self.score_segment(s0, s1, batch_windows, acc, progress)

    def info(self, env: DistEnv) -> dict:
        cfg = self.cfg
        st = self.stats.clone().to(env.device)
        env.all_reduce_(st)
        st = st.cpu().tolist()
        gs = self.guard_stats.clone().to(env.device)
        env.all_reduce_(gs)
        gs = gs.cpu().tolist()
        nc = max(gs[1], 1.0)
        n_ph = len(cfg.phase_iters)
        na = max(st[1], 1.0)
        per = max(st[-1], 1.0) if self.shared else na
        compliant, label = label_for("slot", slot_coupling=cfg.coupling)
        return {
            "compliant": compliant,
            "label": label,
            "space": cfg.space, "coupling": cfg.coupling,
            "phases": [{"max_iter": i, "history": h, "alpha": a}
                       for i, h, a in zip(cfg.phase_iters, cfg.phase_history, cfg.phase_alpha)],
            "focal": cfg.focal, "clamp": cfg.clamp, "l2": cfg.l2, "lr": cfg.lr, "line_search": cfg.line_search,
            "guard": cfg.guard, "guard_frac": cfg.guard_frac, "guard_shrink": list(cfg.guard_shrink),
            "guard_margin": cfg.guard_margin, "guard_z": cfg.guard_z, "guard_refit": cfg.guard_refit,
            "within_doc": cfg.within_doc,
            # windows scored with their fitted delta (guard off: every adapted window), as a share of the
            # adapted windows; the check NLLs are means over the checked windows' check positions
            "windows_kept": int(gs[0]), "windows_checked": int(gs[1]),
            "kept_fraction": gs[0] / st[1] if st[1] > 0 else 0.0,
            "guard_check_nll_zero": gs[2] / nc, "guard_check_nll_scored": gs[3] / nc,
            "guard_kept_per_shrink": [int(c) for c in gs[4:]],
            "warm_start": cfg.warm_start, "warm_from": self.warm_from,
            "windows": int(st[0]), "windows_adapted": int(st[1]),
            "adapt_nll_before": st[2] / na, "adapt_nll_after": st[3] / na,
            "batches": int(st[-1]),
            # L-BFGS iterations / closure evaluations per phase: per adapted window (per batch when shared)
            "iters_mean": [st[4 + k] / per for k in range(n_ph)],
            "evals_mean": [st[4 + n_ph + k] / per for k in range(n_ph)],
        }


def score_slot(model: torch.nn.Module, stream: np.ndarray, plan: ScorePlan, luts_t: dict, env: DistEnv,
               slot_cfg: SlotConfig, *, batch_windows: int, autocast_dtype: torch.dtype | None = None,
               nll_out: np.ndarray | None = None, warm_segments: int = 8, warm_from: str = "mean",
               progress=None) -> tuple[Score, dict]:
    """Causal SLOT over the whole plan. -> (Score, info); info["compliant"] / info["label"] say whether
    the reference (shared-delta) mode was used.

    nll_out: optional float64 array of length plan.n_targets, filled at this rank's scored targets.
    warm_segments: number of plan-determined warm-start segments (ranks take whole segments).
    """
    if warm_segments < 1:
        raise ValueError("warm_segments must be >= 1")
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    acc = ScoreAccumulator(env.device)
    runner = SlotRunner(model, stream, plan, luts_t, slot_cfg, env.device, autocast_dtype=autocast_dtype,
                        nll_out=nll_out, warm_from=warm_from)
    try:
        runner.score_range(0, plan.num_windows, env, batch_windows, warm_segments, acc, progress)
    finally:
        model.train(was_training)
    score = acc.all_reduce(env).result()
    info = runner.info(env)
    secs = time.perf_counter() - t0
    info.update(mode="slot", batch_windows=batch_windows, warm_segments=warm_segments, seconds=secs,
                windows_per_s=plan.num_windows / secs if secs > 0 else math.inf)
    return score, info
