"""`pgolf audit RUN_DIR [--json]`: prove a finished run is legal, or say exactly why it is not.

A run directory (from `pgolf run` / `pipeline.run_record`) holds config.json, results.json, the artifact
and the records of training and quantization. Each check returns a CheckResult (PASS, FAIL or SKIP, an
evidence dict, a one-line message); the report goes to RUN_DIR/audit.json, the table or JSON to stdout,
and the exit status is 1 when any check FAILs. Nothing is taken on trust when it can be recomputed:
scores are re-run through `evaluate()` on a validation prefix, sizes are read from disk, the data from
its shards.

1. causality       per mode the run reported: the perturbation and self-prediction probes of
                   `causality.py` on a validation prefix, with the run's own score settings; bitwise on
                   CPU (the default --device), within causality.CUDA_TOLERANCE nats on CUDA. A prefix
                   too short to exercise the mode's adaptation (one TTT chunk) gives SKIP, not PASS.
2. ledger          TTT modes: re-run score_ttt on the prefix and check its ledger target by target (every
                   update trained only on targets already scored; every target scored after an update
                   lies at or after the update's range), plus `audit_ledger` and the run's own verdict.
3. normalization   per mode, at sampled scored positions: the scored distribution covers all
                   model.vocab_size ids, sums to 1 within 1e-5, and -log p(x_t) is the NLL that was summed.
4. coverage        results.json: every mode scored n_tokens - 1 targets of the whole validation stream
                   (a score.max_val_tokens prefix FAILs: not a challenge score) and their bytes equal the
                   byte-LUT total of the stream, which equals the decoded-text bytes; on the prefix every
                   target was scored exactly once; when the prefix is the whole scored stream, re-scoring
                   reproduces results.json (so an edited validation shard is caught).
5. budgets         code + artifact bytes (the file on disk; code as recorded, else the bundle built for
                   this config) <= min(budget.artifact_bytes_limit, 16,000,000), and the recorded sizes
                   match the file; charged training seconds (a run stopped by the wallclock cap may finish
                   the step in flight, as the challenge's loop does) and the scoring phase's seconds within
                   their limits; times measured on other hardware than budget.target_hardware are flagged
                   and are not a verdict.
6. data            train/val documents disjoint (doc_hashes.json of the prepared data, consistent with its
                   manifest and the val stream); shard sha256 as in the manifest; reads.json: no validation
                   shard opened for anything but periodic evaluation; calibration source selfgen or train.
                   Data without a manifest (e.g. the challenge download): SKIP (no manifest).
7. reference       no mode used a NON-COMPLIANT reference setting (score.slot.coupling=shared,
                   score.ttt.mode=prequant) or was labelled non-compliant, and the settings recorded in
                   results.json are those of config.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import pgolf
from pgolf.config import SCORE_MODES, ConfigError, RunConfig, to_dict
from pgolf.data.shards import ShardError, list_shards, load_val_tokens
from pgolf.data.tokenizer import build_byte_luts, load_tokenizer, luts_to_torch, stream_target_bytes
from pgolf.quant.artifact import load_artifact
from pgolf.quant.container import read_artifact
from pgolf.rundir import ARTIFACT, load_config
from pgolf.runtime import DistEnv, resolve_precision
from pgolf.scoring.evaluate import WARM_SEGMENTS, mode_plan
from pgolf.scoring.ttt import audit_ledger, score_ttt
from pgolf.tools.audit.causality import (
    TTT_MODES,
    ModeProbe,
    probe_mode,
    required_tokens,
    run_mode,
    tolerance,
    too_short_for_ttt,
)
from pgolf.tools.bundle import config_code_bytes
from pgolf.tools.data.verify import VerifyError, doc_byte_counts, find_layout

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"
CHECKS = ("causality", "ledger", "normalization", "coverage", "budgets", "data", "reference")
CHALLENGE_BYTES_LIMIT = 16_000_000
AUTO_MIN_TOKENS = 2048
"""Default probe prefix: max(this, the mode's required_tokens), capped by the scored stream."""
NORM_TOLERANCE = 1e-5
REPRO_RTOL = 1e-5
"""Relative tolerance when re-scoring reproduces results.json (thread counts change float sums)."""
TEXT_BYTES_MAX_TOKENS = 4_000_000
"""Decode at most this many validation tokens for the text-bytes comparison (else the manifest's figure)."""
SHA_TRAIN_MAX_BYTES = 2_000_000_000
"""Hash the training shards too when they total at most this many bytes (validation shards always)."""
VAL_READ_PURPOSES = ("periodic_eval",)
"""The only purposes for which training may open a validation shard (reads.json)."""
CALIBRATION_SOURCES = ("selfgen", "train", None)
AUDIT_FILE = "audit.json"
RESULTS_FILE = "results.json"


@dataclass
class CheckResult:
    name: str
    status: str
    evidence: dict = field(default_factory=dict)
    message: str = ""

    def to_json(self) -> dict:
        return {"name": self.name, "status": self.status, "message": self.message, "evidence": self.evidence}


# ------------------------------------------------------------------------------------------------ the run


@dataclass
class Run:
    """A finished run directory's records (None where a file is absent)."""

    dir: Path
    cfg: RunConfig
    results: dict
    artifact: Path
    quant: dict | None
    timings: dict | None
    train: dict | None
    reads: list | None
    env: dict | None

    @property
    def modes(self) -> list[str]:
        return list(self.results.get("modes", {}))


def _json(path: Path, required: bool = False):
    if not path.is_file():
        if required:
            raise FileNotFoundError(f"{path}: not found (a finished run has it; score the run with `pgolf run`)")
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None


def load_run(run_dir: str | Path) -> Run:

    d = Path(run_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: no such run directory")
    cfg = load_config(d)
    results = _json(d / RESULTS_FILE, required=True)
    if not isinstance(results, dict) or not isinstance(results.get("modes"), dict) or not results["modes"]:
        raise ConfigError(f"{d / RESULTS_FILE}: no scored modes (expected {{'modes': {{mode: result}}}})")
    unknown = [m for m in results["modes"] if m not in SCORE_MODES]
    if unknown:
        raise ConfigError(f"{d / RESULTS_FILE}: unknown mode(s) {unknown}")
    art = d / ARTIFACT
    if not art.is_file():
        raise FileNotFoundError(f"{art}: not found (the run has no artifact; run `pgolf quantize`)")
    return Run(d, cfg, results, art, _json(d / "quant_summary.json"), _json(d / "timings.json"),
               _json(d / "train_summary.json"), _json(d / "reads.json"), _json(d / "env.json"))


@dataclass
class ValData:
    """The validation stream the run's config points at, its tokenizer and byte LUTs."""

    stream: np.ndarray
    sp: object
    luts: object
    scored_len: int  # tokens the run's results cover (score.max_val_tokens prefix, or all)


def load_val(cfg: RunConfig) -> ValData:

    if not Path(cfg.data.tokenizer_path).is_file():
        raise FileNotFoundError(f"{cfg.data.tokenizer_path}: tokenizer not found (config.json data.tokenizer_path)")
    try:
        stream = np.asarray(load_val_tokens(cfg.data.path, cfg.model.vocab_size))
    except ShardError as exc:
        raise FileNotFoundError(f"{cfg.data.path}: validation shards unreadable (config.json data.path): {exc}") from None
    sp = load_tokenizer(cfg.data.tokenizer_path)
    n = len(stream)
    scored = min(n, cfg.score.max_val_tokens) if cfg.score.max_val_tokens else n
    return ValData(stream, sp, build_byte_luts(sp, cfg.model.vocab_size), scored)


def probe_prefix(mode: str, cfg: RunConfig, scored_len: int, max_val_tokens: int | None) -> int:
    if max_val_tokens:
        return min(scored_len, max_val_tokens)
    return min(scored_len, max(required_tokens(mode, cfg), AUTO_MIN_TOKENS))


# ------------------------------------------------------------------------------------------------ 1-4


def check_causality(probes: dict[str, ModeProbe]) -> CheckResult:
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


def check_ledger(run: Run, model, env, val: ValData, luts_t: dict, autocast_dtype, max_val_tokens: int | None,
                 log: Callable[[str], None] | None = None) -> CheckResult:

    modes = [m for m in run.modes if m in TTT_MODES]
    if not modes:
        return CheckResult("ledger", SKIP, {}, "no TTT mode in this run")
    cfg = run.cfg
    ev, fails, vacuous = {}, [], []
    for mode in modes:
        recorded = run.results["modes"][mode].get("audit")
        P = probe_prefix(mode, cfg, val.scored_len, max_val_tokens)
        stream = val.stream[:P]
        plan = mode_plan(mode, P, cfg)
        ws = run.results["modes"][mode].get("settings", {}).get("warm_segments", WARM_SEGMENTS)
        short = too_short_for_ttt(mode, plan, cfg)
        if short:
            ev[mode] = {"prefix_tokens": P, "run_recorded_audit": recorded, "skipped": short}
            vacuous.append(f"{mode}: {short}")
            if recorded is not None and not recorded.get("ok", False):
                fails.append(f"{mode}: the run's own ledger audit failed ({recorded.get('n_problems')} problems)")
            continue
        if log:
            log(f"audit: ledger of {mode} on {P} tokens")
        _, info = score_ttt(model, stream, plan, luts_t, env, cfg.score, with_slot=mode == "ttt+slot",
                            autocast_dtype=autocast_dtype, warm_segments=ws)
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
                    for m, e in ev.items())
    return CheckResult("ledger", PASS, ev, msg + " (run's own audit: ok)")


def check_normalization(probes: dict[str, ModeProbe], vocab_size: int) -> CheckResult:
    ev, fails = {}, []
    for mode, p in probes.items():
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


def _text_bytes(val: ValData, manifest: dict | None) -> tuple[int | None, str]:
    """Decoded-text bytes of the scored stream (whole documents), or the manifest's figure, or None."""

    n, total = val.scored_len, len(val.stream)
    if n == total and manifest and isinstance(manifest.get("val_normalized_text_bytes"), int) and (
            n > TEXT_BYTES_MAX_TOKENS):
        return int(manifest["val_normalized_text_bytes"]), "manifest val_normalized_text_bytes"
    if n > TEXT_BYTES_MAX_TOKENS:
        return None, f"not decoded (> {TEXT_BYTES_MAX_TOKENS:,} tokens and no manifest figure)"
    return None if n < 2 else int(doc_byte_counts(val.sp, val.luts, val.stream[:n])[2].sum()), "decoded documents"


def check_coverage(run: Run, probes: dict[str, ModeProbe], val: ValData, manifest: dict | None,
                   rescored: dict[str, dict] | None = None, device_type: str = "cpu") -> CheckResult:
    """rescored: {mode: evaluate() result on the whole scored stream with the run's own settings} where
    the probe's baseline used other warm-start segments (default: the probes' baselines)."""

    n_all, n = len(val.stream), val.scored_len
    lut_total = stream_target_bytes(val.luts, val.stream[:n])
    text, text_src = _text_bytes(val, manifest)
    same_device = str((run.env or {}).get("device", "cpu")).split(":")[0] == device_type
    ev: dict = {"val_tokens": n_all, "scored_tokens": n, "scored_targets": n - 1, "lut_bytes": lut_total,
                "text_bytes": text, "text_bytes_source": text_src, "modes": {}}
    fails = []
    if n < n_all:
        fails.append(f"results cover the first {n:,} of {n_all:,} validation tokens (score.max_val_tokens="
                     f"{run.cfg.score.max_val_tokens}): not a challenge score")
    if text is not None and text != lut_total and n == n_all:
        fails.append(f"byte LUT total {lut_total:,} != decoded text bytes {text:,} ({text_src})")
    if text is not None and n < n_all:
        ev["text_bytes_note"] = "prefix: the last document may be cut, compared only on whole streams"
    for mode in run.modes:
        r = run.results["modes"][mode]
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
                rb = (rescored or {}).get(mode, b)
                rel = abs(rb["val_loss"] - r["val_loss"]) / max(abs(r["val_loss"]), 1e-12)
                m_ev.update(rescored_val_loss=rb["val_loss"], results_val_loss=r["val_loss"], rel_diff=rel)
                if not same_device:
                    m_ev["reproduction"] = "not compared: the run scored on another device type"
                elif not rel <= REPRO_RTOL or rb["bytes"] != r.get("bytes"):
                    fails.append(f"{mode}: re-scoring the {n:,} scored tokens gives val_loss {rb['val_loss']:.8f}, "
                                 f"results.json says {r['val_loss']:.8f} (the validation data changed since)")
                else:
                    m_ev["reproduction"] = f"reproduced within {REPRO_RTOL:g} relative"
            else:
                m_ev["reproduction"] = f"not re-scored: the probe prefix ({p.prefix_tokens:,}) is shorter"
        ev["modes"][mode] = m_ev
    if fails:
        return CheckResult("coverage", FAIL, ev, "; ".join(fails))
    repro = [m for m, e in ev["modes"].items() if str(e.get("reproduction", "")).startswith("reproduced")]
    text_part = f" = decoded text ({text_src})" if text is not None else f"; text bytes {text_src}"
    return CheckResult("coverage", PASS, ev,
                       f"{len(run.modes)} modes x {n - 1:,} targets, each scored once; {lut_total:,} bytes = LUT total"
                       f"{text_part}; re-scoring reproduces results.json for {len(repro)}/{len(run.modes)} modes")


# ------------------------------------------------------------------------------------------------ 5


def measured_on(env: dict | None) -> str:
    if not env:
        return "unknown hardware (no env.json)"
    ws = int(env.get("world_size") or 1)
    if str(env.get("device", "cpu")).startswith("cuda") and env.get("gpu"):
        return f"{ws}x{env['gpu']}"
    return f"cpu ({env.get('cpu_count', '?')} cores)"


def on_target_hardware(target: str, env: dict | None) -> bool:
    """Whether env.json describes budget.target_hardware ('8xH100 SXM', '2-core CPU', 'any CPU')."""
    if not env:
        return False
    gpu = env.get("gpu") if str(env.get("device", "cpu")).startswith("cuda") else None
    t = target.strip()
    if re.search(r"\bcpu\b", t, re.I):
        if gpu:
            return False
        cores = re.search(r"(\d+)\s*-?\s*cores?", t, re.I)
        return cores is None or int(cores.group(1)) == int(env.get("cpu_count") or 0)
    if not gpu:
        return False
    m = re.match(r"(\d+)\s*x\s*(.+)$", t, re.I)
    count, name = (int(m.group(1)), m.group(2)) if m else (1, t)
    key = re.search(r"[A-Za-z]+\d+\w*", name)
    if key is None or key.group(0).lower() not in gpu.lower():
        return False
    if re.search(r"\bsxm\b", name, re.I) and re.search(r"pcie", gpu, re.I):
        return False
    return int(env.get("world_size") or 1) == count


def _code_bytes(run: Run) -> tuple[int, dict]:
    recorded = None
    for src in (run.quant, run.results):
        if src and isinstance(src.get("code_bytes"), int):
            recorded = src["code_bytes"]
            break
    ev: dict = {"recorded_code_bytes": recorded}
    if recorded:
        ev["code_bytes_source"] = "recorded by the run (the shipped train_gpt.py)"
        return recorded, ev
    bundle = None
    try:

        bundle = config_code_bytes(run.cfg)
    except Exception as exc:  # the bundle is optional evidence; say why it is missing
        ev["bundle_error"] = f"{type(exc).__name__}: {exc}"
    ev["bundle_code_bytes"] = bundle
    if bundle is not None:
        ev["code_bytes_source"] = "no code recorded: the bundle built now for this config"
        return bundle, ev
    ev["code_bytes_source"] = "no code recorded and no bundle: 0 (incomplete)"
    return 0, ev


def check_budgets(run: Run) -> CheckResult:
    b = run.cfg.budget
    fails, notes = [], []
    art = run.artifact.stat().st_size
    code, code_ev = _code_bytes(run)
    limit = min(b.artifact_bytes_limit, CHALLENGE_BYTES_LIMIT)
    total = art + code
    ev: dict = {"artifact_bytes_on_disk": art, "code_bytes": code, **code_ev, "total_bytes": total,
                "limit_bytes": limit, "config_limit_bytes": b.artifact_bytes_limit}
    for name, src in (("quant_summary.json", run.quant), ("results.json", run.results)):
        if src and isinstance(src.get("artifact_bytes"), int) and src["artifact_bytes"] != art:
            fails.append(f"{name} says the artifact has {src['artifact_bytes']:,} bytes, the file has {art:,}")
    if total > limit:
        fails.append(f"code {code:,} + artifact {art:,} = {total:,} bytes > {limit:,}")
    if b.artifact_bytes_limit > CHALLENGE_BYTES_LIMIT:
        notes.append(f"budget.artifact_bytes_limit {b.artifact_bytes_limit:,} is above the challenge's; "
                     f"checked against {CHALLENGE_BYTES_LIMIT:,}")

    where = measured_on(run.env)
    target = on_target_hardware(b.target_hardware, run.env)
    ev.update(measured_on=where, target_hardware=b.target_hardware, on_target=target)
    tr = run.train or {}
    train_s = tr.get("charged_seconds", tr.get("train_seconds"))
    if train_s is None and run.timings:
        train_s = run.timings.get("train")
    timings = run.timings or {}
    eval_s = timings.get("score")
    if eval_s is None:
        eval_s = sum(float(r.get("seconds", 0.0)) for r in run.results["modes"].values())
    ev.update(train_seconds=train_s, train_seconds_limit=b.train_seconds_limit, eval_seconds=eval_s,
              eval_seconds_limit=b.eval_seconds_limit, phases=timings,
              eval_seconds_per_mode={m: r.get("seconds") for m, r in run.results["modes"].items()})
    if train_s is None:
        fails.append("no training time recorded (train_summary.json / timings.json)")
    # A run stopped by the wallclock cap finishes the step in flight, as the challenge's own loop does:
    # up to one (average) step over the limit is the cap working, not a budget overrun.
    grace = (float(tr.get("step_avg_ms") or 0.0) / 1000.0) if tr.get("stopped_by") == "wallclock_cap" else 0.0
    ev["train_grace_seconds"] = grace
    times = []
    for what, secs, lim in (("train", train_s, b.train_seconds_limit), ("eval", eval_s, b.eval_seconds_limit)):
        if secs is None:
            continue
        times.append(f"{what} {secs:.1f}s/{lim:g}s")
        if what == "train" and lim < secs <= lim + grace:
            notes.append(f"train {secs:.3f}s: stopped by the wallclock cap within one step ({grace:.3f}s) of it")
        elif secs > lim:
            if target:
                fails.append(f"{what} time {secs:.1f}s > {lim:g}s on the target hardware ({where})")
            else:
                notes.append(f"{what} time {secs:.1f}s > {lim:g}s, but not measured on the target hardware")
    if run.cfg.score.max_val_tokens:
        notes.append("eval time of a validation prefix, not of the whole stream")
    hw = (f"measured on {where}" if target else
          f"measured on {where}, not the target hardware {b.target_hardware}: times are not a verdict")
    ev["notes"] = notes
    line = f"{total:,} bytes (code {code:,} + artifact {art:,}) <= {limit:,}; {', '.join(times)}; {hw}"
    if fails:
        return CheckResult("budgets", FAIL, ev, "; ".join(fails) + f" ({hw})")
    return CheckResult("budgets", PASS, ev, line + ("; " + "; ".join(notes) if notes else ""))


# ------------------------------------------------------------------------------------------------ 6


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _digest(hashes: list[str]) -> str:
    return hashlib.sha256("".join(hashes).encode()).hexdigest()


def check_data(run: Run, val: ValData) -> CheckResult:

    cfg = run.cfg
    ev: dict = {"data_path": cfg.data.path}
    fails, skips = [], []

    # reads.json: what training opened, and why
    val_files = {p.resolve() for p in list_shards(cfg.data.path, "val")}
    if run.reads is None:
        fails.append("no reads.json: the run did not record which shards it opened")
    else:
        bad = []
        for r in run.reads:
            f = Path(str(r.get("file", "")))
            is_val = f.resolve() in val_files or f.name.startswith("fineweb_val_")
            if is_val and r.get("purpose") not in VAL_READ_PURPOSES:
                bad.append(f"{f.name} ({r.get('purpose')})")
        purposes: dict[str, int] = {}
        for r in run.reads:
            purposes[str(r.get("purpose"))] = purposes.get(str(r.get("purpose")), 0) + 1
        ev["reads"] = {"entries": len(run.reads), "by_purpose": purposes, "val_reads_not_allowed": bad}
        if bad:
            fails.append(f"validation shard(s) opened by training for another purpose than evaluation: {', '.join(bad)}")

    # calibration source of the quantization
    calib = (run.quant or {}).get("calibration")
    art_calib = None
    try:

        art_calib = read_artifact(run.artifact)[0].get("extra", {}).get("calibration")
    except Exception as exc:  # an unreadable artifact is reported, not raised
        ev["artifact_error"] = str(exc)
    ev["calibration"] = {"quant_summary": calib, "artifact_manifest": art_calib}
    srcs = {c.get("source") if isinstance(c, dict) else None for c in (calib, art_calib) if c is not None}
    if not srcs:
        fails.append("no calibration record (quant_summary.json or the artifact manifest)")
    for s in srcs:
        if s not in CALIBRATION_SOURCES:
            fails.append(f"quantization calibrated on {s!r} data (allowed: selfgen, train)")
    if len(srcs) > 1:
        fails.append(f"calibration source differs between quant_summary.json and the artifact: {sorted(map(str, srcs))}")

    # the prepared data's manifest: shard hashes and document fingerprints
    try:
        layout = find_layout(cfg.data.path)
    except VerifyError as exc:
        layout = None
        fails.append(str(exc))
    manifest = layout.manifest if layout else None
    if layout is not None and manifest is None:
        skips.append(f"no manifest beside {layout.dataset_dir} (e.g. challenge-downloaded data): document "
                     "disjointness and shard hashes not checked")
    if manifest is not None:
        ev["manifest"] = str(layout.manifest_path)
        shas = {name: (v.get("sha256") if isinstance(v, dict) else v)
                for name, v in (manifest.get("shards") or {}).items()}
        files = sorted(layout.dataset_dir.glob("fineweb_*.bin"))
        train_bytes = sum(f.stat().st_size for f in files if "_train_" in f.name)
        hash_train = train_bytes <= SHA_TRAIN_MAX_BYTES
        checked, mism, unlisted = 0, [], []
        for f in files:
            if "_train_" in f.name and not hash_train:
                continue
            if f.name not in shas:
                unlisted.append(f.name)
                continue
            checked += 1
            if _sha256(f) != shas[f.name]:
                mism.append(f.name)
        missing = sorted(set(shas) - {f.name for f in files})
        ev["shards"] = {"hashed": checked, "mismatched": mism, "not_in_manifest": unlisted, "missing": missing,
                        "train_hashed": hash_train}
        if mism:
            fails.append(f"shard sha256 differs from the manifest: {', '.join(mism)} (data changed after prepare)")
        if unlisted or missing:
            fails.append(f"shards not in the manifest {unlisted} / listed but missing {missing}")
        hfile = layout.root / str(manifest.get("docs_hashes_file", "doc_hashes.json"))
        if not hfile.is_file() or "docs_hashes_file" not in manifest:
            skips.append(f"no document fingerprints ({hfile.name}) for this manifest: disjointness not checked")
        else:
            hashes = json.loads(hfile.read_text(encoding="utf-8"))
            hv, ht = list(hashes.get("val", [])), list(hashes.get("train", []))
            overlap = sorted(set(hv) & set(ht))
            bos = int(val.sp.bos_id())
            val_docs = int(np.count_nonzero(val.stream == bos))
            ev["documents"] = {"val": len(hv), "train": len(ht), "overlap": len(overlap), "overlap_examples": overlap[:5],
                               "val_docs_in_stream": val_docs}
            if overlap:
                fails.append(f"{len(overlap)} documents are in both train and val (e.g. {overlap[0]})")
            for split, hs in (("val", hv), ("train", ht)):
                want = manifest.get(f"{split}_docs_digest")
                if want is not None and _digest(hs) != want:
                    fails.append(f"{hfile.name}: the {split} fingerprints do not match the manifest's digest")
            if val_docs != len(hv):
                fails.append(f"the validation stream has {val_docs} documents, {hfile.name} lists {len(hv)}")
    if fails:
        return CheckResult("data", FAIL, ev, "; ".join(fails))
    if skips:
        return CheckResult("data", SKIP, ev, "SKIP (no manifest): " + "; ".join(skips) if manifest is None
                           else "; ".join(skips))
    d = ev["documents"]
    calib_txt = "/".join(str(s) for s in srcs if s) or f"none ({run.cfg.quant.method}, no calibration data)"
    return CheckResult("data", PASS, ev,
                       f"{d['val']} val / {d['train']} train documents, none shared; {ev['shards']['hashed']} shards "
                       f"match the manifest sha256; val shards read only for {', '.join(VAL_READ_PURPOSES)}; "
                       f"calibration {calib_txt}")


# ------------------------------------------------------------------------------------------------ 7


def check_reference(run: Run) -> CheckResult:
    cfg = run.cfg
    ev, fails = {}, []
    for mode in run.modes:
        r = run.results["modes"][mode]
        st = r.get("settings", {})
        slot, ttt = st.get("slot"), st.get("ttt")
        e = {"label": r.get("label"), "compliant": r.get("compliant")}
        if slot is not None:
            e["slot_coupling"] = slot.get("coupling")
            if slot.get("coupling") == "shared":
                fails.append(f"{mode}: score.slot.coupling=shared (one SLOT delta fitted on the batch's scored targets)")
            if slot != to_dict(cfg.score.slot):
                fails.append(f"{mode}: the SLOT settings in results.json differ from config.json")
        if ttt is not None:
            e["ttt_mode"] = ttt.get("mode")
            if ttt.get("mode") == "prequant":
                fails.append(f"{mode}: score.ttt.mode=prequant (weights trained on every validation token before scoring)")
            if ttt != to_dict(cfg.score.ttt):
                fails.append(f"{mode}: the TTT settings in results.json differ from config.json")
        if (mode in ("slot", "ttt+slot") and slot is None) or (mode in TTT_MODES and ttt is None):
            fails.append(f"{mode}: results.json does not record the mode's settings")
        if r.get("compliant") is not True:
            fails.append(f"{mode}: labelled {r.get('label')!r}")
        ev[mode] = e
    if fails:
        return CheckResult("reference", FAIL, ev, "; ".join(dict.fromkeys(fails)))
    labels = ", ".join(f"{m} [{e['label']}]" for m, e in ev.items())
    return CheckResult("reference", PASS, ev, f"no reference mode: {labels}")


# ------------------------------------------------------------------------------------------------ audit


def audit(run_dir: str | Path, *, max_val_tokens: int | None = None, device: str = "cpu",
          checks: Iterable[str] = CHECKS, log: Callable[[str], None] | None = None, write: bool = True) -> dict:
    """Run the checks on a finished run; -> the report (also RUN_DIR/audit.json unless write=False).

    max_val_tokens: the probe prefix for every mode (default: per mode, max(AUTO_MIN_TOKENS, what the
    mode's probes need), capped by the scored stream). device: "cpu" (exact), "cuda" or "auto".
    """

    checks = tuple(checks)
    bad = [c for c in checks if c not in CHECKS]
    if bad or not checks:
        raise ConfigError(f"audit: unknown check(s) {bad}; choose from {', '.join(CHECKS)}")
    if max_val_tokens is not None and max_val_tokens and max_val_tokens < 2:
        raise ConfigError(f"--max-val-tokens must be >= 2, got {max_val_tokens}")
    if device not in ("cpu", "cuda", "auto"):
        raise ConfigError(f"--device must be cpu, cuda or auto, got {device!r}")
    t0 = time.perf_counter()
    run = load_run(run_dir)
    dev = torch.device("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu")
    env = DistEnv(device=dev)
    deterministic = torch.are_deterministic_algorithms_enabled()
    if dev.type == "cuda":  # atomics (scatter/index add) would add run-to-run noise to the comparisons
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        report = _audit(run, env, checks, max_val_tokens, log, t0)
    finally:
        torch.use_deterministic_algorithms(deterministic)
    if write:
        tmp = run.dir / (AUDIT_FILE + ".tmp")
        tmp.write_text(json.dumps(report, indent=2, default=_json_default) + "\n", encoding="utf-8")
        tmp.replace(run.dir / AUDIT_FILE)
    return json.loads(json.dumps(report, default=_json_default))


def _audit(run: Run, env, checks: tuple[str, ...], max_val_tokens: int | None, log, t0: float) -> dict:

    cfg, dev = run.cfg, env.device
    val = load_val(cfg)
    results: dict[str, CheckResult] = {}
    probes: dict[str, ModeProbe] = {}
    need_model = {"causality", "normalization", "coverage", "ledger"} & set(checks)
    model = luts_t = amp = None
    if need_model:
        model = load_artifact(run.artifact, dev)
        if to_dict(model.cfg) != to_dict(cfg.model):
            raise ConfigError(f"{run.artifact}: the artifact's model config differs from {run.dir / 'config.json'}")
        luts_t = luts_to_torch(val.luts, dev)
        amp, _ = resolve_precision(cfg, dev)
    if {"causality", "normalization", "coverage"} & set(checks):

        for mode in run.modes:
            P = probe_prefix(mode, cfg, val.scored_len, max_val_tokens)
            ws = run.results["modes"][mode].get("settings", {}).get("warm_segments", WARM_SEGMENTS)
            try:
                probes[mode] = probe_mode(model, cfg, env, mode, val.stream[:P], luts_t, autocast_dtype=amp,
                                          run_warm_segments=ws, log=log,
                                          baseline_only=not {"causality", "normalization"} & set(checks))
            except RuntimeError as exc:  # evaluate() refuses a mode that misses or repeats targets
                probes[mode] = ModeProbe(mode, P, tolerance(dev), ws, ws, {}, np.zeros(0),
                                         problems=[f"{mode}: evaluation on the {P}-token prefix failed: {exc}"])
    manifest, rescored = None, {}
    if "coverage" in checks:

        for mode, p in probes.items():  # the run's own warm-start segments where the probe changed them
            if p.baseline and p.prefix_tokens == val.scored_len and p.warm_segments != p.run_warm_segments:
                rescored[mode] = run_mode(model, cfg, env, mode, val.stream[:p.prefix_tokens], luts_t,
                                          autocast_dtype=amp, warm_segments=p.run_warm_segments).result

        try:
            manifest = find_layout(cfg.data.path).manifest
        except VerifyError:
            manifest = None
    for name in checks:
        if name == "causality":
            results[name] = check_causality(probes)
        elif name == "ledger":
            results[name] = check_ledger(run, model, env, val, luts_t, amp, max_val_tokens, log)
        elif name == "normalization":
            results[name] = check_normalization(probes, cfg.model.vocab_size)
        elif name == "coverage":
            results[name] = check_coverage(run, probes, val, manifest, rescored, dev.type)
        elif name == "budgets":
            results[name] = check_budgets(run)
        elif name == "data":
            results[name] = check_data(run, val)
        elif name == "reference":
            results[name] = check_reference(run)
    status = FAIL if any(r.status == FAIL for r in results.values()) else PASS

    report = {"run_dir": str(run.dir), "status": status, "device": str(dev), "pgolf": pgolf.__version__,
              "max_val_tokens": max_val_tokens, "modes": run.modes,
              "probe_prefix_tokens": {m: p.prefix_tokens for m, p in probes.items()},
              "seconds": time.perf_counter() - t0,
              "checks": [results[c].to_json() for c in checks]}
    return report


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def format_table(report: dict, width: int = 200) -> str:
    """check | status | one-line evidence, then the verdict line."""
    rows = [(c["name"], c["status"], c["message"]) for c in report["checks"]]
    w0 = max(len("check"), *(len(r[0]) for r in rows))
    lines = [f"audit of {report['run_dir']} (device {report['device']}, {report['seconds']:.1f}s)",
             f"{'check':<{w0}}  status  evidence", f"{'-' * w0}  ------  {'-' * 8}"]
    for name, status, msg in rows:
        if len(msg) > width:
            msg = msg[:width - 3] + "..."
        lines.append(f"{name:<{w0}}  {status:<6}  {msg}")
    n_fail = sum(r[1] == FAIL for r in rows)
    lines.append(f"audit: {report['status']}" + (f" ({n_fail} check(s) failed; details in {AUDIT_FILE})" if n_fail
                                                 else f" (details in {Path(report['run_dir']) / AUDIT_FILE})"))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ CLI


def cmd_audit(args) -> int:
    quiet = bool(args.json)

    def log(msg: str) -> None:
        if not quiet:
            print(msg, file=sys.stderr, flush=True)

    checks = tuple(c.strip() for c in args.checks.split(",") if c.strip()) if args.checks else CHECKS
    report = audit(args.run_dir, max_val_tokens=args.max_val_tokens, device=args.device, checks=checks, log=log)
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    return 1 if report["status"] == FAIL else 0


def add_audit_parser(verbs) -> argparse.ArgumentParser:
    """Add the `audit` verb to an argparse subparsers object (set_defaults(fn=cmd_audit))."""
    p = verbs.add_parser("audit", help="compliance checks of a finished run: causality, ledger, normalization, "
                                       "coverage, budgets, data, reference modes (exit 1 on any FAIL)")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished run directory (results.json + artifact)")
    p.add_argument("--json", action="store_true", help="print the report as JSON (also written to RUN_DIR/audit.json)")
    p.add_argument("--max-val-tokens", type=int, default=None, metavar="N",
                   help=f"validation prefix for the probes (default: per mode, max({AUTO_MIN_TOKENS}, what its "
                        "windows/batches/chunks need), capped by the scored stream)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"],
                   help="where the probes run: cpu compares bitwise (default); cuda within 1e-5 nats")
    p.add_argument("--checks", default=None, metavar="LIST", help=f"comma-separated subset of {', '.join(CHECKS)}")
    p.set_defaults(fn=cmd_audit)
    return p
