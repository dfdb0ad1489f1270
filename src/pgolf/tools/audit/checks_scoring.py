"""The checks of how the run was scored: causality, ledger, normalization, coverage (docs/DESIGN.md#audit).

Each re-runs `evaluate()` (through the context's shared probes) or score_ttt on a validation prefix with
the run's own score settings and compares with what the run reported; nothing is taken on trust.
"""

from __future__ import annotations

import numpy as np

from pgolf.data.tokenizer import stream_target_bytes
from pgolf.scoring.evaluate import mode_plan
from pgolf.scoring.lora import DocQueue, audit_lora_ledger, score_lora
from pgolf.scoring.modes import MODES, ttt_modes
from pgolf.scoring.ttt import audit_ledger, score_ttt
from pgolf.tools.audit.causality import too_short_for_ttt
from pgolf.tools.audit.context import FAIL, PASS, SKIP, AuditContext, CheckResult, ValData
from pgolf.tools.data.verify import doc_byte_counts

NORM_TOLERANCE = 1e-5
REPRO_RTOL = 1e-5
"""Relative tolerance when re-scoring reproduces results.json (thread counts change float sums)."""
TEXT_BYTES_MAX_TOKENS = 4_000_000
"""Decode at most this many validation tokens for the text-bytes comparison (else the manifest's figure)."""
REPRODUCED, NOT_COMPARED, NOT_RESCORED = "reproduced", "not compared", "not re-scored"
"""How coverage's per-mode evidence "reproduction" begins."""


# ------------------------------------------------------------------------------------------------ causality


def check_causality(ctx: AuditContext) -> CheckResult:
    """Per mode: the flip and self-prediction probes; a prefix that cannot exercise the adaptation is SKIP."""
    probes = ctx.probes
    ev = {m: p.to_json() for m, p in probes.items()}
    failed = {m: p for m, p in probes.items() if not p.ok}
    vacuous = {m: p.vacuous for m, p in probes.items() if p.ok and p.vacuous}
    if failed:
        msg = "; ".join(p.problems[0] for p in failed.values())
        return CheckResult("causality", FAIL, ev, msg)
    flips = sum(len(p.flips) for p in probes.values())
    planted = sum(len(p.self_prediction) for p in probes.values())
    tol = max(p.tolerance for p in probes.values())
    adv = max((abs(s["advantage_nats"]) for p in probes.values() for s in p.self_prediction), default=0.0)
    prefixes = sorted({p.prefix_tokens for p in probes.values()})
    exact = "bitwise" if tol == 0 else f"within {tol:g} nats"
    base = (f"{','.join(probes)}: {flips} flips moved no earlier target ({exact}); {planted} planted-answer runs: "
            f"self-prediction advantage {adv:.3g} nats; prefix {'/'.join(f'{n:,}' for n in prefixes)} tokens")
    if vacuous:
        return CheckResult("causality", SKIP, ev, "not exercised on the prefix: "
                           + "; ".join(f"{m}: {v}" for m, v in vacuous.items()) + f" ({base})")
    return CheckResult("causality", PASS, ev, base)


# ------------------------------------------------------------------------------------------------ ledger


def ledger_problems(ledger: dict, plan) -> tuple[list[str], dict]:
    """Target-level check of a TTT ledger: -> (problems, facts)."""
    n = plan.n_targets
    at_w = np.asarray(ledger["window_scored_at"], dtype=np.int64)
    at = np.full(n, -1, dtype=np.int64)
    count = np.zeros(n, dtype=np.int64)
    for w in range(plan.num_windows):
        lo, hi = plan.scored_range(w)
        at[lo:hi] = at_w[w]
        count[lo:hi] += 1
    out = []
    if (count != 1).any():
        out.append(f"{int((count == 0).sum())} targets never scored, {int((count > 1).sum())} scored twice")
    if (at < 0).any():
        out.append(f"{int((at < 0).sum())} targets in windows that were never scored")
    for clock, lo, hi in zip(ledger["update_clock"], ledger["update_lo"], ledger["update_hi"]):
        clock, lo, hi = int(clock), int(lo), int(hi)
        if not 0 <= lo < hi <= n:
            out.append(f"update @{clock} trained on [{lo}, {hi}) outside the {n} targets")
            continue
        late = np.flatnonzero(at[lo:hi] >= clock)
        if len(late):
            t = lo + int(late[0])
            out.append(f"update @{clock} trained on target {t}, scored only at @{int(at[t])}")
        after = np.flatnonzero(at > clock)
        if len(after) and int(after[0]) < hi:
            out.append(f"update @{clock} trained on [{lo}, {hi}) before target {int(after[0])} was scored")
    facts = {"updates": int(len(ledger["update_clock"])), "windows": int(plan.num_windows),
             "scoring_phases": int(len(np.unique(at_w))), "targets": n}
    return out, facts


def _lora_ledger(ctx: AuditContext, mode: str, ev: dict, fails: list[str], vacuous: list[str]) -> None:
    """Mode lora: re-run it on the prefix and check its ledger target by target (audit_lora_ledger)."""
    recorded = ctx.mode_result(mode).get("audit")
    P = ctx.prefix(mode)
    stream = ctx.val.stream[:P]
    if ctx.log:
        ctx.log(f"audit: ledger of {mode} on {P} tokens")
    _, info = score_lora(ctx.model, stream, ctx.luts_t, ctx.env, ctx.cfg.score, autocast_dtype=ctx.autocast_dtype)
    targets = DocQueue.build(stream, ctx.cfg.model.bos_id).targets
    problems = audit_lora_ledger(info["ledger"], P - 1, targets)
    ev[mode] = {"prefix_tokens": P, "documents": info["documents"], "chunks": info["chunks"],
                "updates": info["updates"], "phases": len(info["phases"]), "order": info["order"],
                "problems": problems[:20], "run_recorded_audit": recorded}
    if recorded is None:
        fails.append(f"{mode}: results.json records no ledger audit")
    elif not recorded.get("ok", False):
        fails.append(f"{mode}: the run's own ledger audit failed ({recorded.get('n_problems')} problems)")
    if problems:
        fails.append(f"{mode}: {problems[0]}")
    elif info["updates"] == 0:
        vacuous.append(f"{mode}: no adapter update on the {P}-token prefix")


def check_ledger(ctx: AuditContext) -> CheckResult:
    """TTT and lora modes: re-run them on the prefix; the ledger target by target, and the run's own verdict."""
    modes = [m for m in ctx.modes if m in ttt_modes() or MODES[m].family == "lora"]
    if not modes:
        return CheckResult("ledger", SKIP, {}, "no TTT or LoRA mode in this run")
    cfg = ctx.cfg
    ev, fails, vacuous = {}, [], []
    for mode in modes:
        if MODES[mode].family == "lora":
            _lora_ledger(ctx, mode, ev, fails, vacuous)
            continue
        recorded = ctx.mode_result(mode).get("audit")
        P = ctx.prefix(mode)
        stream = ctx.val.stream[:P]
        plan = mode_plan(mode, stream, cfg)
        ws = ctx.run_warm_segments(mode)
        short = too_short_for_ttt(mode, plan, cfg)
        if short:
            ev[mode] = {"prefix_tokens": P, "run_recorded_audit": recorded, "skipped": short}
            vacuous.append(f"{mode}: {short}")
            if recorded is not None and not recorded.get("ok", False):
                fails.append(f"{mode}: the run's own ledger audit failed ({recorded.get('n_problems')} problems)")
            continue
        if ctx.log:
            ctx.log(f"audit: ledger of {mode} on {P} tokens")
        _, info = score_ttt(ctx.model, stream, plan, ctx.luts_t, ctx.env, cfg.score, with_slot=MODES[mode].slot,
                            autocast_dtype=ctx.autocast_dtype, warm_segments=ws)
        mine, facts = ledger_problems(info["ledger"], plan)
        theirs = audit_ledger(info["ledger"], plan)
        ev[mode] = {"prefix_tokens": P, **facts, "chunks": info["chunks"], "ttt_mode": info["ttt_mode"],
                    "problems": mine[:20], "audit_ledger_problems": theirs[:20], "run_recorded_audit": recorded}
        if recorded is None:
            fails.append(f"{mode}: results.json records no ledger audit")
        elif not recorded.get("ok", False):
            fails.append(f"{mode}: the run's own ledger audit failed ({recorded.get('n_problems')} problems)")
        if mine or theirs:
            fails.append(f"{mode}: {(mine or theirs)[0]}")
        elif facts["updates"] == 0:
            vacuous.append(f"{mode}: no update on the {P}-token prefix")
    if fails:
        return CheckResult("ledger", FAIL, ev, "; ".join(fails))
    if vacuous:
        return CheckResult("ledger", SKIP, ev, "; ".join(vacuous))
    msg = "; ".join(f"{m}: {e['updates']} updates over {e['chunks']} chunks, each on targets scored before it"
                    + (f", {e['phases']} global phase(s)" if "phases" in e else "") for m, e in ev.items())
    return CheckResult("ledger", PASS, ev, msg + " (run's own audit: ok)")


# ------------------------------------------------------------------------------------------------ normalization


def check_normalization(ctx: AuditContext) -> CheckResult:
    """At sampled scored positions: all vocab_size ids, sums to 1, -log p(x_t) is the NLL that was summed."""
    vocab_size = ctx.cfg.model.vocab_size
    ev, fails = {}, []
    for mode, p in ctx.probes.items():
        n = p.normalization
        ev[mode] = n
        if not n.get("positions"):
            fails.append(f"{mode}: no scored distribution captured (the scorer does not report it)")
            continue
        tol = max(NORM_TOLERANCE, p.tolerance)
        if n["columns"] != vocab_size:
            fails.append(f"{mode}: distribution over {n['columns']} ids, the vocabulary has {vocab_size}")
        if not n["rows_finite"] or not n["max_abs_sum_minus_1"] <= NORM_TOLERANCE:
            fails.append(f"{mode}: probabilities sum to {n['min_sum']:.6f}..{n['max_sum']:.6f}")
        if not n["max_nll_mismatch"] <= tol:
            fails.append(f"{mode}: the summed NLL differs from -log p(x_t) by up to {n['max_nll_mismatch']:.3g}")
    if fails:
        return CheckResult("normalization", FAIL, ev, "; ".join(fails))
    worst = max(n["max_abs_sum_minus_1"] for n in ev.values())
    pos = sum(n["positions"] for n in ev.values())
    return CheckResult("normalization", PASS, ev,
                       f"{pos} scored distributions over all {vocab_size} ids in {len(ev)} mode(s): |sum - 1| <= "
                       f"{worst:.1e}, NLL = -log p(x_t)")


# ------------------------------------------------------------------------------------------------ coverage


def _text_bytes(val: ValData, manifest: dict | None) -> tuple[int | None, str]:
    """Decoded-text bytes of the scored stream (whole documents), or the manifest's figure, or None."""
    n, total = val.scored_len, len(val.stream)
    if n == total and manifest and isinstance(manifest.get("val_normalized_text_bytes"), int) and (
            n > TEXT_BYTES_MAX_TOKENS):
        return int(manifest["val_normalized_text_bytes"]), "manifest val_normalized_text_bytes"
    if n > TEXT_BYTES_MAX_TOKENS:
        return None, f"not decoded (> {TEXT_BYTES_MAX_TOKENS:,} tokens and no manifest figure)"
    return None if n < 2 else int(doc_byte_counts(val.sp, val.luts, val.stream[:n])[2].sum()), "decoded documents"


def reproduction_summary(modes_ev: dict[str, dict], scored_tokens: int) -> str:
    """What coverage did with results.json, from its per-mode evidence: re-scored and reproduced, re-scored
    but not compared (another device type), or not re-scored (the probe prefix is shorter)."""
    total = len(modes_ev)

    def having(prefix: str) -> dict[str, dict]:
        return {m: e for m, e in modes_ev.items() if str(e.get("reproduction", "")).startswith(prefix)}

    done, other, short = having(REPRODUCED), having(NOT_COMPARED), having(NOT_RESCORED)
    parts = []
    if done:
        parts.append(f"re-scored and reproduced results.json for {len(done)} of {total} modes")
    if other:
        parts.append(f"re-scored {len(other)} of {total} modes, not compared with results.json (scored on another "
                     "device type)")
    if short:
        prefixes = "/".join(f"{p:,}" for p in sorted({e["prefix_tokens"] for e in short.values()}))
        which = "" if len(short) == total else f" for {len(short)} of {total} modes"
        parts.append(f"results.json not re-scored{which} (probe prefix {prefixes} of {scored_tokens:,} tokens)")
    return "; ".join(parts) or "results.json not re-scored"


def check_coverage(ctx: AuditContext) -> CheckResult:
    """Every mode scored the whole stream's targets once, with the LUT bytes (= decoded text); the prefix
    re-scored target by target; the whole scored stream re-scored reproduces results.json."""
    val, results = ctx.val, ctx.results
    probes, rescored = ctx.probes, ctx.rescored
    n_all, n = len(val.stream), val.scored_len
    lut_total = stream_target_bytes(val.luts, val.stream[:n])
    text, text_src = _text_bytes(val, ctx.manifest)
    same_device = str((ctx.run_env or {}).get("device", "cpu")).split(":")[0] == ctx.device.type
    ev: dict = {"val_tokens": n_all, "scored_tokens": n, "scored_targets": n - 1, "lut_bytes": lut_total,
                "text_bytes": text, "text_bytes_source": text_src, "modes": {}}
    fails = []
    if n < n_all:
        fails.append(f"results cover the first {n:,} of {n_all:,} validation tokens (score.max_val_tokens="
                     f"{ctx.cfg.score.max_val_tokens}): not a challenge score")
    if text is not None and text != lut_total and n == n_all:
        fails.append(f"byte LUT total {lut_total:,} != decoded text bytes {text:,} ({text_src})")
    if text is not None and n < n_all:
        ev["text_bytes_note"] = "prefix: the last document may be cut, compared only on whole streams"
    for mode in ctx.modes:
        r = results.modes[mode]
        m_ev: dict = {"targets": r.get("targets"), "bytes": r.get("bytes")}
        if r.get("targets") != n - 1:
            fails.append(f"{mode}: results.json has {r.get('targets')} targets, the scored stream has {n - 1}")
        if r.get("bytes") != lut_total:
            fails.append(f"{mode}: results.json has {r.get('bytes')} bytes, the byte LUTs give {lut_total} for the "
                         "scored stream")
        p = probes.get(mode)
        if p is not None and not p.baseline:
            fails.append(p.problems[0] if p.problems else f"{mode}: re-scoring the prefix failed")
        elif p is not None:
            b = p.baseline
            prefix_bytes = stream_target_bytes(val.luts, val.stream[:p.prefix_tokens])
            m_ev.update(prefix_tokens=p.prefix_tokens, prefix_targets=int(len(p.nll)),
                        prefix_bytes=b["bytes"], nll_nan=int(np.isnan(p.nll).sum()))
            if b["targets"] != p.prefix_tokens - 1 or len(p.nll) != p.prefix_tokens - 1 or np.isnan(p.nll).any():
                fails.append(f"{mode}: re-scoring the {p.prefix_tokens}-token prefix scored {b['targets']} targets")
            elif abs(float(p.nll.sum()) - b["nats"]) > 1e-9 * max(1.0, abs(b["nats"])):
                fails.append(f"{mode}: per-target NLL sum {float(p.nll.sum())} != summed nats {b['nats']}")
            if b["bytes"] != prefix_bytes:
                fails.append(f"{mode}: re-scoring counted {b['bytes']} bytes, the byte LUTs give {prefix_bytes}")
            if p.prefix_tokens == n:
                rb = rescored.get(mode, b)
                rel = abs(rb["val_loss"] - r["val_loss"]) / max(abs(r["val_loss"]), 1e-12)
                m_ev.update(rescored_val_loss=rb["val_loss"], results_val_loss=r["val_loss"], rel_diff=rel)
                if not same_device:
                    m_ev["reproduction"] = f"{NOT_COMPARED}: the run scored on another device type"
                elif not rel <= REPRO_RTOL or rb["bytes"] != r.get("bytes"):
                    fails.append(f"{mode}: re-scoring the {n:,} scored tokens gives val_loss {rb['val_loss']:.8f}, "
                                 f"results.json says {r['val_loss']:.8f} (the validation data changed since)")
                else:
                    m_ev["reproduction"] = f"{REPRODUCED} within {REPRO_RTOL:g} relative"
            else:
                m_ev["reproduction"] = f"{NOT_RESCORED}: the probe prefix ({p.prefix_tokens:,}) is shorter"
        ev["modes"][mode] = m_ev
    if fails:
        return CheckResult("coverage", FAIL, ev, "; ".join(fails))
    text_part = f" = decoded text ({text_src})" if text is not None else f"; text bytes {text_src}"
    return CheckResult("coverage", PASS, ev,
                       f"{len(ctx.modes)} modes x {n - 1:,} targets, each scored once; {lut_total:,} bytes = LUT total"
                       f"{text_part}; {reproduction_summary(ev['modes'], n)}")
