"""Pipeline-level causality probes of one evaluation mode on a validation prefix (docs/DESIGN.md#leak-tests).

Everything goes through `evaluate()` (the path `pgolf eval` and the pipeline take) with the run's own
score settings, on a prefix of the validation stream. Indexing: target t is the token stream[t + 1],
predicted from stream[0 .. t].

Perturbation probe. Replace the token at stream index m = t + 1 (another id) and re-run. That token is
target t itself and later input, so every target before t must keep its NLL: nll[:t] unchanged. The
distribution scored at t must not change either (only its gold token did); the scored log-probabilities
come from the `SCORED_TAP` hook of the scorers. Probed t (from the mode's ScorePlan):
  window   the first scored target of a window in the middle of a batch (a batch-coupled SLOT delta
           adapts on it in the next window and scores the earlier windows of the batch with it)
  batch    the first scored target of the second batch (warm start from the first)
  segment  the first target of the second SLOT warm-start segment
  inside   a target inside a window's scored region
  chunk    TTT: the last target of chunk 0 (trained on after chunk 0 was scored) and the first of chunk 1
  end      the last token of the prefix (everything before it must be unchanged)

Self-prediction probe ("the score of x_t must not improve when the adaptation path is given x_t"). For
a probed t, compare the log-probability of the true token x_t = stream[t + 1] in three runs:
  true      the real stream (baseline);
  withheld  the flip run above: the adaptation path never sees x_t (a wrong token stands at t + 1);
  given     x_t planted at every stream index >= t + 1: an adapter that reads targets it has not yet
            scored is pulled toward x_t.
A causal evaluator gives the same distribution at t in all three (the inputs stream[0 .. t] are equal);
advantage = NLL_withheld(x_t) - NLL_given(x_t) (nats) is then exactly 0. A leak makes it positive.

Exactness: on CPU every comparison is bitwise (tolerance 0). On CUDA (atomics, kernel choice) it is
|difference| <= CUDA_TOLERANCE nats per target / per log-probability, and the baseline is run twice to
measure the device's own noise, which must stay within the tolerance.

Warm starts: SLOT restarts its warm start at every warm-start segment; on a short prefix the run's
segment count can leave one batch per segment, so the probe lowers it until each segment has at least
two batches (it is a plan-level knob, not a rule; the evidence says so).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from pgolf.config import RunConfig
from pgolf.runtime import DistEnv
from pgolf.scoring.bpb import SCORED_TAP
from pgolf.scoring.evaluate import WARM_SEGMENTS, EvalData, evaluate, mode_plan
from pgolf.scoring.lora import DocQueue
from pgolf.scoring.modes import MODES
from pgolf.scoring.plan import ScorePlan
from pgolf.scoring.slot import segments
from pgolf.scoring.ttt import chunk_windows

CUDA_TOLERANCE = 1e-5
"""nats: the largest per-target NLL / log-probability change accepted as device noise on CUDA."""
NORM_SAMPLES = 32
"""Evenly spaced scored positions whose distribution is captured for the normalization check."""


def tolerance(device: torch.device) -> float:
    return 0.0 if device.type == "cpu" else CUDA_TOLERANCE


def required_tokens(mode: str, cfg: RunConfig) -> int:
    """Smallest prefix (tokens) that holds every structure the mode's probes need: plain three windows
    (no adaptation, windows are independent), sliding two batches of windows and a spare, SLOT four
    batches (two warm-start segments of two batches), TTT three chunks (the last one short) so that an
    update happens between two scoring phases and the chunk after it is scored after it."""
    T, bw, S = cfg.score.seq_len, cfg.score.sliding.batch_windows, cfg.score.sliding.stride
    m = MODES[mode]
    if not m.overlapping:  # plain
        return 3 * T + 1
    if m.family == "lora":  # two chunks of a document, then the rest of a window
        return 2 * cfg.score.lora.chunk_tokens + T + 2
    if m.ttt:
        return 2 * cfg.score.ttt.chunk_tokens + max(T, bw * S) + 2
    windows = 4 * bw if m.slot else 2 * bw + 2
    return (windows - 1) * S + T + 1


def probe_warm_segments(mode: str, plan: ScorePlan, cfg: RunConfig, run_warm_segments: int) -> int:
    """The run's warm-start segment count, lowered until each segment holds >= 2 batches."""
    bw = cfg.score.sliding.batch_windows
    m = MODES[mode]
    if not m.slot:
        return run_warm_segments
    if not m.ttt:  # slot: segments of the whole stream's batches
        batches = -(-plan.num_windows // bw)
    else:  # ttt+slot: segments are cut inside each TTT chunk
        batches = max(1, cfg.score.ttt.chunk_tokens // (plan.stride * bw))
    return max(1, min(run_warm_segments, batches // 2))


def document_points(mode: str, stream: np.ndarray, cfg: RunConfig) -> list[tuple[int, str]]:
    """Per-document modes: the BOS of the second document and the token after it (a document boundary);
    for lora also a chunk boundary inside the first document, the first document that waits for a free
    slot ("batch") and the first document after a global phase ("phase")."""
    q = DocQueue.build(stream, cfg.model.bos_id, cfg.score.lora.phase_docs)
    tg, docs = q.targets, q.docs
    pts: list[tuple[int, str]] = []
    if len(tg) > 1:
        pts += [(int(tg[1, 0]) - 1, "document"), (int(tg[1, 0]), "document")]
    if MODES[mode].family == "lora":
        c = cfg.score.lora.chunk_tokens
        pts += [(int(tg[0, 0]) + c - 1, "chunk"), (int(tg[0, 0]) + c, "chunk")]
        per = cfg.score.lora.docs_per_batch
        if len(docs) > per:
            pts.append((int(tg[docs[per], 0]) + 1, "batch"))
        if len(q.segments) > 1:
            pts.append((int(tg[docs[q.segments[1][0]], 0]) + 1, "phase"))
    return pts


def probe_points(mode: str, plan: ScorePlan, cfg: RunConfig, warm_segments: int,
                 stream: np.ndarray | None = None) -> list[tuple[int, str]]:
    """[(target t, kind)] to flip (stream index t + 1), sorted, distinct, 1 <= t < n_targets."""
    W, bw, n = plan.num_windows, cfg.score.sliding.batch_windows, plan.n_targets

    def first(w: int) -> int:
        return plan.scored_range(w)[0]

    pts: list[tuple[int, str]] = []
    b = 1 if W > bw + bw // 2 else 0
    w_mid = min(b * bw + max(bw // 2, 1), W - 1)
    pts.append((first(w_mid), "window"))
    if W > bw:
        pts.append((first(bw), "batch"))
    lo, hi = plan.scored_range((2 * W) // 3)
    pts.append(((lo + hi) // 2, "inside"))
    if MODES[mode].family == "slot":  # warm-start segments over the whole stream (ttt+slot cuts them per chunk)
        segs = segments(0, W, bw, warm_segments)
        if len(segs) > 1:
            pts.append((first(segs[1][0]), "segment"))
    if MODES[mode].ttt:
        c = cfg.score.ttt.chunk_tokens
        pts += [(c - 1, "chunk"), (c, "chunk")]
    if MODES[mode].per_document and stream is not None:
        pts += document_points(mode, stream, cfg)
    pts.append((n - 1, "end"))
    out: dict[int, str] = {}
    for t, kind in pts:
        if 1 <= t < n and t not in out:
            out[t] = kind
    return sorted(out.items())


def self_prediction_points(points: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Up to two probed targets whose answer an adapter could see before scoring them."""
    order = {"window": 0, "chunk": 1, "inside": 2, "batch": 3}
    cands = sorted((p for p in points if p[1] in order), key=lambda p: (order[p[1]], p[0]))
    return cands[:2]


@dataclass
class ModeRun:
    result: dict
    nll: np.ndarray
    logp: dict[int, torch.Tensor]  # captured scored log-probabilities (V,) float64, by target index


def run_mode(model: torch.nn.Module, cfg: RunConfig, env: DistEnv, mode: str, stream: np.ndarray, luts_t: dict, *,
             autocast_dtype: torch.dtype | None, warm_segments: int, capture: Iterable[int] = ()) -> ModeRun:
    """evaluate() one mode on `stream` -> result, per-target NLL, and the scored distributions at `capture`."""
    want = np.asarray(sorted(set(int(t) for t in capture)), dtype=np.int64)
    got: dict[int, torch.Tensor] = {}

    def tap(pos: torch.Tensor, logp: torch.Tensor) -> None:
        p = pos.cpu().numpy()
        for i in np.flatnonzero(np.isin(p, want)):
            got[int(p[i])] = logp[i].detach().to("cpu", torch.float64)

    nll: dict[str, np.ndarray] = {}
    token = SCORED_TAP.set(tap if len(want) else None)
    try:
        res = evaluate(model, cfg, env, modes=(mode,), data=EvalData(stream, luts_t), autocast_dtype=autocast_dtype,
                       nll_out=nll, warm_segments=warm_segments, log=lambda _msg: None)[mode]
    finally:
        SCORED_TAP.reset(token)
    return ModeRun(res, nll[mode], got)


@dataclass
class ModeProbe:
    """Everything the causality, normalization and coverage checks read about one mode."""

    mode: str
    prefix_tokens: int
    tolerance: float
    warm_segments: int
    run_warm_segments: int
    baseline: dict
    nll: np.ndarray
    flips: list[dict] = field(default_factory=list)
    self_prediction: list[dict] = field(default_factory=list)
    normalization: dict = field(default_factory=dict)
    noise: float | None = None
    seconds: float = 0.0
    vacuous: str | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict:
        b = self.baseline
        return {"mode": self.mode, "prefix_tokens": self.prefix_tokens, "targets": int(len(self.nll)),
                "tolerance_nats": self.tolerance, "warm_segments": self.warm_segments,
                "run_warm_segments": self.run_warm_segments, "device_noise_nats": self.noise,
                "seconds": self.seconds,
                "baseline": {k: b[k] for k in ("val_loss", "val_bpb", "nats", "targets", "bytes") if k in b},
                "flips": self.flips, "self_prediction": self.self_prediction,
                "normalization": self.normalization, "vacuous": self.vacuous, "ok": self.ok,
                "problems": self.problems}


def _max_abs(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    d = np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))
    return float(d.max()) if d.size else 0.0


def ttt_chunks(plan: ScorePlan, cfg: RunConfig) -> int:
    """TTT chunks holding scored windows on this plan (an update happens only between two of them)."""
    b = chunk_windows(plan, cfg.score.ttt.chunk_tokens)
    return int((b[1:] > b[:-1]).sum())


def too_short_for_ttt(mode: str, plan: ScorePlan, cfg: RunConfig) -> str | None:
    """Why score-first TTT cannot update on this prefix (then its probes are vacuous), or None."""
    t = cfg.score.ttt
    if MODES[mode].ttt and t.mode == "score_first" and t.epochs > 0 and ttt_chunks(plan, cfg) < 2:
        return (f"the {plan.n_targets + 1:,}-token prefix holds {ttt_chunks(plan, cfg)} TTT chunk(s) of "
                f"{t.chunk_tokens:,} targets: no update happens (needs > {t.chunk_tokens + 1:,} tokens)")
    return None


def _vacuous(mode: str, res: dict) -> str | None:
    """Why the prefix exercised none of the mode's adaptation (then the probe proves nothing), or None."""
    m = MODES[mode]
    if m.ttt:
        ttt = res.get("ttt", {})
        if not ttt.get("updates"):
            return f"{ttt.get('chunks', '?')} TTT chunk(s) on the prefix: no update happened between scoring phases"
    if m.slot:
        slot = res.get("slot", {})
        if not slot.get("windows_adapted"):
            return "no SLOT window adapted on the prefix"
        if slot.get("windows_kept", 1) == 0:
            return "the SLOT guard kept no window's delta on the prefix: every window was scored as sliding"
        if m.family == "slot" and slot.get("batches", 0) < 2:
            return "one SLOT batch on the prefix: no warm start"
    if m.family == "lora" and not res.get("lora", {}).get("updates"):
        return "no document on the prefix is longer than one LoRA chunk: no adapter update happened"
    return None


def normalization_stats(run: ModeRun, vocab_size: int) -> dict:
    """At the captured positions: does the scored distribution cover the full vocabulary, sum to 1, and
    give exactly the NLL the scorer added up?"""
    if not run.logp:
        return {"positions": 0}
    ts = sorted(run.logp)
    rows = torch.stack([run.logp[t] for t in ts])  # (n, V) float64
    sums = rows.exp().sum(-1)
    return {"positions": len(ts), "columns": int(rows.shape[-1]), "vocab_size": vocab_size,
            "max_abs_sum_minus_1": float((sums - 1).abs().max()),
            "min_sum": float(sums.min()), "max_sum": float(sums.max()),
            "rows_finite": bool(torch.isfinite(rows.exp()).all())}


def nll_mismatch(run: ModeRun, stream: np.ndarray) -> float:
    """max |-logp[x_t] - nll[t]| over the captured positions (the summed NLL comes from that distribution)."""
    out = 0.0
    for t, row in run.logp.items():
        out = max(out, abs(-float(row[int(stream[t + 1])]) - float(run.nll[t])))
    return out


def probe_mode(model: torch.nn.Module, cfg: RunConfig, env: DistEnv, mode: str, stream: np.ndarray, luts_t: dict,
               *, autocast_dtype: torch.dtype | None, run_warm_segments: int = WARM_SEGMENTS,
               log: Callable[[str], None] | None = None, stop_on_violation: bool = True,
               baseline_only: bool = False) -> ModeProbe:
    """Run the perturbation and self-prediction probes of one mode on `stream` (the prefix).
    baseline_only: just the unperturbed run with the run's own warm-start segments (coverage alone)."""
    V = cfg.model.vocab_size
    tol = tolerance(env.device)
    plan = mode_plan(mode, stream, cfg)
    ws = run_warm_segments if baseline_only else probe_warm_segments(mode, plan, cfg, run_warm_segments)
    points = probe_points(mode, plan, cfg, ws, stream)
    selfp = self_prediction_points(points)
    step = max(1, plan.n_targets // NORM_SAMPLES)
    capture = set(range(0, plan.n_targets, step)) | {t for t, _ in points}

    def go(s: np.ndarray, cap: Iterable[int]) -> ModeRun:
        return run_mode(model, cfg, env, mode, s, luts_t, autocast_dtype=autocast_dtype, warm_segments=ws,
                        capture=cap)

    short = too_short_for_ttt(mode, plan, cfg)
    if log:
        log(f"audit: probing {mode} on {len(stream)} tokens" + ("" if baseline_only or short else
            f": {len(points)} flips, {len(selfp)} planted runs"))
    t0 = time.perf_counter()
    base = go(stream, capture)
    probe = ModeProbe(mode, len(stream), tol, ws, run_warm_segments, base.result, base.nll)
    probe.vacuous = short or _vacuous(mode, base.result)
    norm = normalization_stats(base, V)
    norm["max_nll_mismatch"] = nll_mismatch(base, stream)
    probe.normalization = norm
    try:
        if not baseline_only and not probe.vacuous:
            _perturb(probe, go, stream, base, points, selfp, tol, V, mode, stop_on_violation)
    finally:
        probe.seconds = time.perf_counter() - t0
    return probe


def _perturb(probe: ModeProbe, go, stream: np.ndarray, base: ModeRun, points, selfp, tol: float, V: int, mode: str,
             stop_on_violation: bool) -> None:
    """The device-noise run (CUDA), the flips and the planted-answer runs; problems go into `probe`."""
    capture = list(base.logp)
    if tol > 0:  # device noise: the same run twice
        again = go(stream, capture)
        probe.noise = max(_max_abs(again.nll, base.nll),
                          max((_max_abs(again.logp[t], base.logp[t]) for t in base.logp), default=0.0))
        if probe.noise > tol:
            probe.problems.append(f"{mode}: two identical runs differ by {probe.noise:.2e} nats > tolerance {tol:g}")

    def flipped(m: int) -> np.ndarray:
        s = stream.copy()
        s[m] = (int(s[m]) + 1) % V
        return s

    flip_runs: dict[int, ModeRun] = {}
    for t, kind in points:
        r = go(flipped(t + 1), [t])
        flip_runs[t] = r
        diff = np.abs(r.nll[:t] - base.nll[:t])
        bad = np.flatnonzero(diff > tol)
        own = _max_abs(r.logp[t], base.logp[t]) if t in r.logp and t in base.logp else float("nan")
        rec = {"m": t + 1, "t": t, "kind": kind, "earlier_targets": t, "changed": int(len(bad)),
               "first_changed": int(bad[0]) if len(bad) else None,
               "max_abs_change": float(diff.max()) if t else 0.0, "own_distribution_max_abs_change": own}
        probe.flips.append(rec)
        if len(bad):
            probe.problems.append(f"{mode}: changing stream[{t + 1}] ({kind} probe) moved {len(bad)} of the {t} earlier "
                                  f"targets (first {int(bad[0])}, max |dNLL| {float(diff.max()):.3g} nats)")
        elif not own <= tol:
            probe.problems.append(f"{mode}: changing stream[{t + 1}] ({kind} probe) changed the distribution scored "
                                  f"at target {t} itself (max |dlogp| {own:.3g})")
        if probe.problems and stop_on_violation:
            return

    for t, kind in selfp:
        x = int(stream[t + 1])
        s = stream.copy()
        s[t + 1:] = x
        given = go(s, [t])
        withheld = flip_runs[t]
        nll_true = float(base.nll[t])
        nll_given = float(given.nll[t])
        nll_withheld = -float(withheld.logp[t][x]) if t in withheld.logp else float("nan")
        dist = max(_max_abs(given.logp[t], base.logp[t]), _max_abs(withheld.logp[t], base.logp[t]))
        rec = {"t": t, "kind": kind, "token": x, "nll_true": nll_true, "nll_given": nll_given,
               "nll_withheld": nll_withheld, "advantage_nats": nll_withheld - nll_given,
               "distribution_max_abs_change": dist}
        probe.self_prediction.append(rec)
        if not (dist <= tol and abs(nll_given - nll_true) <= tol):
            probe.problems.append(f"{mode}: target {t} ({kind}) scores {nll_given:.4f} nats when x_t is planted after "
                                  f"it, {nll_withheld:.4f} when withheld, {nll_true:.4f} as run (self-prediction "
                                  f"advantage {nll_withheld - nll_given:+.3g} nats)")
            if stop_on_violation:
                return
