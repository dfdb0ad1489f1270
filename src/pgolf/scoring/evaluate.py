"""Evaluate a model on the validation stream with each configured mode; one result object per mode.

Modes (config.SCORE_MODES; all read the same stream and every one scores each target exactly once):

    plain      non-overlapping windows of score.seq_len (plan.plain_plan; the last partial one kept)
    sliding    window score.seq_len, stride score.sliding.stride, fixed tail rule (docs/DESIGN.md#eval-sliding)
    slot       sliding windows + causal per-window SLOT (slot.score_slot with score.slot; 8.4)
    ttt        score-first test-time training over chunks (ttt.score_ttt with score.ttt; 7.2)
    ttt+slot   ttt, each chunk scored with causal SLOT

The modes themselves (family, plan, compliance label) are the table `pgolf.scoring.modes.MODES`.
`evaluate()` returns {mode: result} (all ranks get the same; JSON-ready, `pgolf eval --json` prints
it), each result::

    "val_loss", "val_bpb", "nats", "targets", "bytes"    loss in nats/target; float64 sums, one division
    "seconds", "windows", "windows_per_s"               CUDA-synced wall time of this mode
    "seconds_phases": {"score", "train"}                ttt modes only
    "settings": {...}                                   the config sub-dicts this mode used
    "compliant": bool, "label": str                     NON-COMPLIANT for the reference modes
    "weights": str                                      what was scored (artifact / float weights)
    "audit": {"ok", "n_problems", "problems"}           ttt modes: the audit_ledger verdict
    "slot": {...}, "ttt": {...}                         method diagnostics (never the ledger arrays)
    "eval_seconds_total", "eval_seconds_limit",         the whole call: summed seconds of every mode
    "eval_over_budget"                                  run, budget.eval_seconds_limit, sum > limit

The budget is reported, never enforced: when the summed seconds of the modes run exceed
budget.eval_seconds_limit a WARNING line is logged and eval_over_budget is true (the challenge's
limit is for the whole evaluation on 8xH100, docs/DESIGN.md#eval-budgets).

Compliance: `score.slot.coupling=shared` and `score.ttt.mode=prequant` reproduce the withdrawn entry
(docs/DESIGN.md#noncompliant-modes) and are labelled NON-COMPLIANT (`modes.label_for`); a ttt ledger
that fails `audit_ledger` also makes its mode non-compliant.

Exactly once: every mode's scored-target count must equal the plan's; with `nll_out` (per-target NLL,
float64, stream order: index t = the target stream[t + 1]) the ranks' disjoint parts are summed and
each target must have been written by exactly one rank, so no target is missed or scored twice.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from pgolf.config import SCORE_MODES, ConfigError, RunConfig, to_dict
from pgolf.data.shards import load_val_tokens
from pgolf.data.tokenizer import build_byte_luts, load_tokenizer, luts_to_torch
from pgolf.runtime import DistEnv, rank_share, sync
from pgolf.scoring.lora import DocQueue, audit_lora_ledger, lora_settings, score_lora
from pgolf.scoring.modes import AUDIT_FAILED, MODES, noncompliant
from pgolf.scoring.plan import ScorePlan
from pgolf.scoring.sliding import score_windows
from pgolf.scoring.slot import rank_segments, score_slot, segments
from pgolf.scoring.ttt import audit_ledger, chunk_windows, score_ttt
from pgolf.telemetry import Progress

WARM_SEGMENTS = 8
"""SLOT warm-start segments (slot.py): ranks take whole segments, so up to 8 ranks share the work."""
AUDIT_FAILED_LABEL = noncompliant(AUDIT_FAILED)
MAX_AUDIT_PROBLEMS = 20
"""At most this many ledger problems are listed in a result (n_problems counts them all)."""


@dataclass(frozen=True)
class EvalData:
    """The validation stream and the byte LUTs (torch, on the scoring device)."""

    stream: np.ndarray
    luts_t: dict


def load_eval_data(cfg: RunConfig, device: torch.device, max_val_tokens: int = 0) -> EvalData:
    stream = load_val_tokens(cfg.data.path, cfg.model.vocab_size)
    if max_val_tokens:
        stream = stream[:max_val_tokens]
    sp = load_tokenizer(cfg.data.tokenizer_path)
    return EvalData(np.asarray(stream), luts_to_torch(build_byte_luts(sp, cfg.model.vocab_size), device))


def mode_plan(mode: str, stream: np.ndarray | int, cfg: RunConfig) -> ScorePlan:
    """The mode's windows over `stream` (or a stream of that many tokens, for modes that do not plan per
    document)."""
    return MODES[mode].plan(stream, cfg)


def mode_settings(mode: str, cfg: RunConfig, plan: ScorePlan, warm_segments: int) -> dict:
    out = {"seq_len": plan.seq_len, "stride": plan.stride, "batch_windows": cfg.score.sliding.batch_windows}
    if MODES[mode].slot:
        out["slot"] = to_dict(cfg.score.slot)
        out["warm_segments"] = warm_segments
    if MODES[mode].ttt:
        out["ttt"] = to_dict(cfg.score.ttt)
    if MODES[mode].family == "lora":
        out["lora"] = to_dict(lora_settings(cfg.score).lora)
    return out


def rank_window_count(mode: str, plan: ScorePlan, cfg: RunConfig, env: DistEnv, warm_segments: int,
                      stream: np.ndarray | None = None) -> int:
    """Windows this rank scores in `mode` (the progress bar's total; documents for lora)."""
    bw = cfg.score.sliding.batch_windows
    W = plan.num_windows

    m = MODES[mode]

    def share(lo: int, hi: int) -> int:
        if m.slot:
            return sum(b - a for a, b in rank_segments(segments(lo, hi, bw, warm_segments), env))
        a, b = rank_share(lo, hi, env)
        return b - a

    if m.family == "window":
        lo, hi = plan.rank_windows(env)
        return hi - lo
    if m.family == "lora":
        q = DocQueue.build(stream, cfg.model.bos_id, cfg.score.lora.phase_docs)
        return sum(len(q.rank_docs(a, b, env)) for a, b in q.segments)
    if m.family == "slot" or cfg.score.ttt.mode == "prequant":
        return share(0, W)
    bounds = chunk_windows(plan, cfg.score.ttt.chunk_tokens)
    return sum(share(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a)


def _gather_nll(nll: np.ndarray, env: DistEnv, mode: str) -> np.ndarray:
    """Sum the ranks' disjoint NLL parts; raise unless every target was written by exactly one rank."""
    written = ~np.isnan(nll)
    if env.distributed:
        t = torch.from_numpy(np.where(written, nll, 0.0)).to(env.device)
        c = torch.from_numpy(written.astype(np.float64)).to(env.device)
        env.all_reduce_(t)
        env.all_reduce_(c)
        nll, count = t.cpu().numpy(), c.cpu().numpy()
    else:
        count = written.astype(np.float64)
    if not (count == 1).all():
        raise RuntimeError(f"eval {mode}: {int((count == 0).sum())} targets never scored, "
                           f"{int((count > 1).sum())} scored on several ranks")
    return nll


def _default_log(env: DistEnv) -> Callable[[str], None]:
    def log(msg: str) -> None:
        if env.is_main:
            print(msg, file=sys.stderr, flush=True)
    return log


def _run_mode(mode: str, model: torch.nn.Module, data: EvalData, plan: ScorePlan, cfg: RunConfig, env: DistEnv,
              autocast_dtype, nll: np.ndarray | None, bar, warm_segments: int) -> dict:
    """-> the mode's result fields (score, compliance, diagnostics); timing is added by the caller."""
    bw = cfg.score.sliding.batch_windows
    family = MODES[mode].family
    if family == "window":
        s = score_windows(model, data.stream, plan, data.luts_t, env, batch_windows=bw, autocast_dtype=autocast_dtype,
                          nll_out=nll, progress=bar)
        compliant, label = MODES[mode].compliance(cfg)
        return {**s.to_json(), "compliant": compliant, "label": label}
    if family == "lora":
        s, info = score_lora(model, data.stream, data.luts_t, env, cfg.score, autocast_dtype=autocast_dtype,
                             nll_out=nll, progress=bar)
        problems = audit_lora_ledger(info["ledger"], plan.n_targets,
                                     DocQueue.build(data.stream, cfg.model.bos_id).targets)
        compliant, label = info["compliant"], info["label"]
        if problems and compliant:
            compliant, label = False, AUDIT_FAILED_LABEL
        return {**s.to_json(), "compliant": compliant, "label": label,
                "seconds_phases": {"score": info["seconds_score"], "global": info["seconds_global"]},
                "audit": {"ok": not problems, "n_problems": len(problems), "problems": problems[:MAX_AUDIT_PROBLEMS]},
                "lora": {k: info[k] for k in ("documents", "segments", "chunks", "updates", "phases", "order")}}
    if family == "slot":
        s, info = score_slot(model, data.stream, plan, data.luts_t, env, cfg.score.slot, batch_windows=bw,
                             autocast_dtype=autocast_dtype, nll_out=nll, warm_segments=warm_segments, progress=bar)
        diag = {k: v for k, v in info.items() if k not in ("compliant", "label", "mode", "seconds", "windows_per_s")}
        return {**s.to_json(), "compliant": info["compliant"], "label": info["label"], "slot": diag}
    s, info = score_ttt(model, data.stream, plan, data.luts_t, env, cfg.score, with_slot=MODES[mode].slot,
                        autocast_dtype=autocast_dtype, nll_out=nll, warm_segments=warm_segments, progress=bar)
    problems = audit_ledger(info["ledger"], plan)
    compliant, label = info["compliant"], info["label"]
    if problems and compliant:
        compliant, label = False, AUDIT_FAILED_LABEL
    out = {**s.to_json(), "compliant": compliant, "label": label,
           "seconds_phases": {"score": info["seconds_score"], "train": info["seconds_train"]},
           "audit": {"ok": not problems, "n_problems": len(problems), "problems": problems[:MAX_AUDIT_PROBLEMS]},
           "ttt": {k: info[k] for k in ("ttt_mode", "chunks", "updates", "train_loss_per_chunk")}}
    if "slot" in info:
        out["slot"] = info["slot"]
    return out


def evaluate(model: torch.nn.Module, cfg: RunConfig, env: DistEnv, *, modes: Iterable[str] | None = None,
             max_val_tokens: int = 0, data: EvalData | None = None, autocast_dtype: torch.dtype | None = None,
             progress: bool = False, nll_out: dict[str, np.ndarray] | None = None, weights: str = "",
             warm_segments: int = WARM_SEGMENTS, log: Callable[[str], None] | None = None) -> dict[str, dict]:
    """Score `model` with each mode (default cfg.score.modes); see the module docstring for the result.

    data: the stream and LUTs (default: loaded from cfg.data); max_val_tokens keeps a prefix of it.
    nll_out: if given, nll_out[mode] is set to the per-target NLL (float64, stream order, all ranks).
    weights: a label of what is being scored, copied into the result and every mode's result.
    log: receives the budget WARNING line (default: stderr on rank 0).
    """
    modes = tuple(modes or cfg.score.modes)
    missing = [m for m in modes if m not in SCORE_MODES]
    if missing:
        raise ConfigError(f"score.modes: unknown mode(s) {missing}; choose from {', '.join(SCORE_MODES)}")
    log = log or _default_log(env)
    if data is None:
        data = load_eval_data(cfg, env.device, max_val_tokens)
    elif max_val_tokens:
        data = EvalData(data.stream[:max_val_tokens], data.luts_t)
    was_training = model.training
    model.eval()
    results: dict[str, dict] = {}
    try:
        for mode in modes:
            plan = mode_plan(mode, data.stream, cfg)
            nll = np.full(plan.n_targets, np.nan) if nll_out is not None else None
            total = rank_window_count(mode, plan, cfg, env, warm_segments, data.stream)
            t0 = time.perf_counter()
            unit = "doc" if MODES[mode].family == "lora" else "win"
            with Progress(f"eval {mode}", total=total, unit=unit, enabled=progress and env.is_main) as bar:
                r = _run_mode(mode, model, data, plan, cfg, env, autocast_dtype, nll, bar, warm_segments)
            sync(env.device)
            secs = time.perf_counter() - t0
            if r["targets"] != plan.n_targets:  # with the NLL check below: every target exactly once
                raise RuntimeError(f"eval {mode}: scored {r['targets']} targets, the plan has {plan.n_targets}")
            if nll is not None:
                nll_out[mode] = _gather_nll(nll, env, mode)
            results[mode] = {**r, "seconds": secs, "windows": plan.num_windows,
                             "precision": "bf16-autocast" if autocast_dtype is not None else "fp32",
                             "windows_per_s": plan.num_windows / secs if secs > 0 else float("inf"),
                             "settings": mode_settings(mode, cfg, plan, warm_segments), "weights": weights}
    finally:
        model.train(was_training)
    total_s = sum(r["seconds"] for r in results.values())
    limit = cfg.budget.eval_seconds_limit
    over = total_s > limit
    if over:
        per = ", ".join(f"{m} {r['seconds']:.1f}s" for m, r in results.items())
        log(f"WARNING: eval time {total_s:.1f}s ({per}) exceeds budget.eval_seconds_limit={limit:g}s "
            f"on {env.world_size} rank(s) (reported, not enforced)")
    for r in results.values():
        r.update(eval_seconds_total=total_s, eval_seconds_limit=limit, eval_over_budget=over)
    return results
