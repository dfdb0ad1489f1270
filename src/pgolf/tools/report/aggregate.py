"""The seeds of a record attempt -> the report dict: per-mode means and stds, the record test, compliance.

The primary score of a run is its last configured mode (`score.modes[-1]`, the one `pipeline.run_record`
logs last), unless --mode names another. A run scored on a validation prefix only (`score.max_val_tokens`)
carries `partial` in its results; every table flags it: such a number is not a challenge score.
"""

from __future__ import annotations

from typing import Any

from pgolf.config import ConfigError
from pgolf.rundir import RESULTS
from pgolf.tools.report.baseline import load_baseline
from pgolf.tools.report.runs import NOT_AUDITED, PARTIAL_NOTE, SeedRun, consistency_warnings, run_facts
from pgolf.tools.report.stats import mean_std, significance


def primary_mode(runs: list[SeedRun], mode: str | None = None) -> str:
    """--mode, else the last of the first run's score.modes; it must be scored in every run."""
    m = mode or runs[0].cfg.score.modes[-1]
    for r in runs:
        if m not in r.modes:
            raise ConfigError(f"{r.path / RESULTS}: no {m!r} score (scored: {', '.join(r.modes)})")
    return m


def aggregate(runs: list[SeedRun], baseline: list[str] | None = None, mode: str | None = None,
              baseline_mode: str | None = None) -> dict:
    """Aggregate the seeds (`runs.load_runs`) and test them against the baseline: -> the report dict
    (report.json's content; the runs themselves are not in it)."""
    prim = primary_mode(runs, mode)
    facts = [run_facts(r) for r in runs]
    mode_order: list[str] = []
    for r in runs:
        for m in list(r.cfg.score.modes) + list(r.modes):
            if m in r.modes and m not in mode_order:
                mode_order.append(m)
    stats = {}
    for m in mode_order:
        rows = [(f["seed"], f["modes"][m]) for f in facts if m in f["modes"]]
        loss, loss_sd = mean_std([v["val_loss"] for _, v in rows])
        bpb, bpb_sd = mean_std([v["val_bpb"] for _, v in rows])
        stats[m] = {"n": len(rows), "seeds": [s for s, _ in rows], "val_loss_mean": loss, "val_loss_std": loss_sd,
                    "val_bpb_mean": bpb, "val_bpb_std": bpb_sd,
                    "partial": next((v["partial"] for _, v in rows if v["partial"]), None),
                    "labels": sorted({v["label"] for _, v in rows})}
    agg = {}
    for k in ("steps", "step_avg_ms", "train_seconds", "eval_seconds", "total_bytes"):
        vals = [f[k] for f in facts if isinstance(f[k], int | float)]
        agg[k] = dict(zip(("mean", "std"), mean_std(vals), strict=True)) | {"max": max(vals) if vals else None}
    warnings = [w for r in runs for w in r.warnings] + consistency_warnings(runs)
    ps = stats[prim]
    ratio = ps["val_loss_mean"] / ps["val_bpb_mean"] if ps["val_bpb_mean"] else None
    rep: dict[str, Any] = {
        "pgolf_report": 1, "runs": facts, "seeds": [f["seed"] for f in facts], "preset": facts[0]["preset"],
        "primary_mode": prim, "modes": stats, "aggregate": agg, "warnings": warnings, "baseline": None,
        "significance": None, "partial": ps["partial"],
    }
    if baseline:
        base = load_baseline(baseline, baseline_mode or prim)
        rep["baseline"] = base.to_json()
        sig = significance([f["modes"][prim]["val_loss"] for f in facts], base, ratio)
        if ps["partial"]:
            sig["verdict"] += f" ({PARTIAL_NOTE})"
        if base.val_bpb_mean is not None:
            sig["delta_bpb_measured"] = ps["val_bpb_mean"] - base.val_bpb_mean
        rep["significance"] = sig
    rep["compliance"] = compliance(runs, facts, prim)
    return rep


def compliance(runs: list[SeedRun], facts: list[dict], prim: str) -> dict:
    """The record compliance booleans (docs/DESIGN.md#submission-json, as in the 2026-04-09 record), for the primary mode.

    Time budgets compare the measured seconds with the config's limits; `measured_on_target_hardware` says
    whether those seconds mean anything for the challenge. pgolf has no ETLB and no n-gram cache mode, so
    those two hold by construction; `score_first_ttt` holds when TTT is not used or is score-first.
    """
    cfgs = [r.cfg for r in runs]
    uses_slot = prim in ("slot", "ttt+slot")
    uses_ttt = prim in ("ttt", "ttt+slot")
    evals = [f["eval_seconds"] for f in facts]
    return {
        "train_under_600s": all(f["charged_train_seconds"] <= r.cfg.budget.train_seconds_limit
                                for f, r in zip(facts, runs, strict=True)),
        "artifact_under_16mb": all(f["within_limit"] and f["total_bytes"] <= f["limit_bytes"] for f in facts),
        "eval_under_600s": all(e is not None and e <= r.cfg.budget.eval_seconds_limit
                               for e, r in zip(evals, runs, strict=True)),
        "no_slot": not uses_slot,
        "no_pre_quant_ttt": not (uses_ttt and any(c.score.ttt.mode == "prequant" for c in cfgs)),
        "no_etlb": True,
        "no_ngram_cache": True,
        "score_first_ttt": not uses_ttt or all(c.score.ttt.mode == "score_first" for c in cfgs),
        "three_seeds": len({f["seed"] for f in facts}) >= 3,
        "slot_per_window": (all(c.score.slot.coupling == "per_window" for c in cfgs) if uses_slot else None),
        "full_validation": not any(f["modes"][prim]["partial"] for f in facts),
        "primary_mode_compliant": all(f["modes"][prim]["compliant"] for f in facts),
        "audited": all(f["audit"]["status"] != NOT_AUDITED for f in facts),
        "audit_passed": all(f["audit"]["passed"] is True for f in facts),
        "measured_on_target_hardware": all(f["on_target_hardware"] for f in facts),
    }
