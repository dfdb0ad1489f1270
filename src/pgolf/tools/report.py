"""`pgolf report RUN_DIR...`: aggregate the seeds of a record attempt, test it against a baseline, write the files.

Tooling module (never imported by runtime code). Reads the run directories written by
`pgolf.pipeline.run_record` (config.json, results.json, train_summary.json, metrics.jsonl, timings.json,
quant_summary.json, env.json and, when the auditor has run, audit.json) and writes to --out:

- `submission.json`: the fields of docs/DESIGN.md#submission-json, with the compliance booleans;
- `README.md`: the results tables, the statistics paragraph and links to the plots;
- `report.json`: everything above, machine-readable;
- PNG plots (`PLOT_FILES`): training loss over steps and time, validation BPB over steps and time, BPB per
  evaluation mode, submission bytes against the cap.

Statistics (docs/DESIGN.md#record-test): a record must lower the mean val_loss (nats/token) by at least 0.005 nats
at p < 0.01. The test is Welch's one-sided two-sample t-test of H0: mean_ours - mean_base >= -0.005 against
H1: mean_ours - mean_base < -0.005, with the Welch-Satterthwaite degrees of freedom (`welch_t`).

The primary score of a run is its last configured mode (`score.modes[-1]`, the one `pipeline.run_record`
logs last), unless --mode names another. A run scored on a validation prefix only (`score.max_val_tokens`)
carries `partial` in its results; every table flags it: such a number is not a challenge score.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import statistics
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pgolf
from pgolf.config import ConfigError, diff, flatten
from pgolf.presets import PRESETS, get_preset
from pgolf.rundir import load_config

MARGIN_NATS = 0.005
"""The record bar: the mean val_loss must improve by at least this many nats/token (docs/DESIGN.md#record-test)."""
ALPHA = 0.01
"""The record bar's significance level."""
PROGRESSION_ALPHA = 0.25
"""The maintainers' later leaderboard cutoff (one-sided, no margin; docs/DESIGN.md#record-test, PR #1902)."""
PARTIAL_NOTE = "partial: not a challenge score"
NOT_AUDITED = "not audited"
PLOT_FILES = {
    "train_loss": "train_loss.png",
    "val_bpb": "val_bpb.png",
    "bpb_by_mode": "bpb_by_mode.png",
    "artifact_bytes": "artifact_bytes.png",
}
PLOT_DPI = 110
PLOT_SIZE = {"train_loss": (12.0, 4.8), "val_bpb": (12.0, 4.8), "bpb_by_mode": (8.0, 5.0),
             "artifact_bytes": (12.0, 5.0)}
"""Figure sizes in inches; the PNGs are (w * PLOT_DPI) x (h * PLOT_DPI) pixels."""
REPORT_FILES = ("submission.json", "README.md", "report.json")


# ------------------------------------------------------------------------------------------------ statistics


def welch_from_stats(mean_a: float, std_a: float, n_a: int, mean_b: float, std_b: float, n_b: int,
                     delta: float = 0.0, alternative: str = "two-sided") -> tuple[float, float, float]:
    """Welch's t-test from summary statistics (sample std, ddof=1): -> (t, df, p).

    Tests mu_a - mu_b against `delta`: t = (mean_a - mean_b - delta) / sqrt(s_a^2/n_a + s_b^2/n_b), df by
    Welch-Satterthwaite. alternative: "two-sided" (H1: mu_a - mu_b != delta), "less" (H1: mu_a - mu_b < delta)
    or "greater" (H1: mu_a - mu_b > delta). With both variances zero, t is +-inf (p 0 or 1) or nan (p nan).
    """
    from scipy.stats import t as t_dist

    if alternative not in ("two-sided", "less", "greater"):
        raise ConfigError(f"alternative: {alternative!r} is not one of two-sided, less, greater")
    if n_a < 2 or n_b < 2:
        raise ConfigError(f"a Welch test needs at least 2 values per group (got {n_a} and {n_b})")
    va, vb = std_a * std_a / n_a, std_b * std_b / n_b
    diff = mean_a - mean_b - delta
    se = math.sqrt(va + vb)
    if se == 0.0:
        t = math.copysign(math.inf, diff) if diff != 0 else math.nan
        df = float(n_a + n_b - 2)
    else:
        t = diff / se
        df = (va + vb) ** 2 / (va * va / (n_a - 1) + vb * vb / (n_b - 1))
    if math.isnan(t):
        return t, df, math.nan
    if alternative == "less":
        p = float(t_dist.cdf(t, df))
    elif alternative == "greater":
        p = float(t_dist.sf(t, df))
    else:
        p = float(min(1.0, 2.0 * t_dist.sf(abs(t), df)))
    return float(t), float(df), p


def welch_t(a, b, delta: float = 0.0, alternative: str = "two-sided") -> tuple[float, float, float]:
    """Welch's unequal-variance t-test of mean(a) - mean(b) against `delta`: -> (t, df, p).

    The record test (docs/DESIGN.md#record-test) is `welch_t(ours, baseline, delta=-0.005, alternative="less")`:
    H0 mu_ours - mu_base >= -0.005 nats, rejected when p < 0.01. See `welch_from_stats` for the formulas.
    """
    a, b = [float(x) for x in a], [float(x) for x in b]
    if len(a) < 2 or len(b) < 2:
        raise ConfigError(f"a Welch test needs at least 2 values per group (got {len(a)} and {len(b)})")
    return welch_from_stats(statistics.fmean(a), statistics.stdev(a), len(a),
                            statistics.fmean(b), statistics.stdev(b), len(b), delta, alternative)


def mean_std(xs) -> tuple[float, float]:
    """(mean, sample std with ddof=1); std is nan for a single value."""
    xs = [float(x) for x in xs]
    if not xs:
        return math.nan, math.nan
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else math.nan)


# ------------------------------------------------------------------------------------------------ run directories


@dataclass
class Run:
    """One seed's run directory, parsed."""

    path: Path
    cfg: Any
    results: dict
    summary: dict = field(default_factory=dict)
    metrics: list[dict] = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    quant: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    audit: dict | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def seed(self) -> int:
        return int(self.results.get("seed", self.cfg.seed))

    @property
    def modes(self) -> dict[str, dict]:
        return self.results["modes"]


def _read_json(p: Path, what: str, required: bool = True):
    if not p.is_file():
        if required:
            raise FileNotFoundError(f"{p}: missing ({what})")
        return None
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: not valid JSON ({e.__class__.__name__}: {e})") from None


def read_metrics(p: Path) -> tuple[list[dict], int]:
    """metrics.jsonl -> (records, number of unreadable lines skipped, e.g. a torn last line)."""
    if not p.is_file():
        return [], 0
    out, bad = [], 0
    for line in p.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(rec, dict):
            out.append(rec)
        else:
            bad += 1
    return out, bad


def load_run(run_dir: str | Path) -> Run:
    """Parse one run directory; missing or malformed required files raise one-line errors naming the file."""

    d = Path(run_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: not a directory (expected a run directory written by `pgolf run`)")
    res_path = d / "results.json"
    if not res_path.is_file():
        raise FileNotFoundError(f"{res_path}: missing: the run has not been scored (run `pgolf run`)")
    results = _read_json(res_path, "results")
    if not isinstance(results, dict) or not isinstance(results.get("modes"), dict) or not results["modes"]:
        raise ConfigError(f"{res_path}: no scored modes ('modes' is missing or empty)")
    for m, r in results["modes"].items():
        if not isinstance(r, dict) or not all(isinstance(r.get(k), int | float) for k in ("val_loss", "val_bpb")):
            raise ConfigError(f"{res_path}: mode {m!r} has no numeric val_loss and val_bpb")
    for k in ("steps", "total_bytes"):
        if not isinstance(results.get(k), int | float):
            raise ConfigError(f"{res_path}: {k!r} is missing or not a number")
    try:
        cfg = load_config(d)
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ConfigError(f"{d / 'config.json'}: unreadable run config ({e.__class__.__name__}: {e})") from None
    run = Run(path=d, cfg=cfg, results=results)
    run.summary = _read_json(d / "train_summary.json", "training summary", required=False) or {}
    run.timings = _read_json(d / "timings.json", "phase timings", required=False) or {}
    run.quant = _read_json(d / "quant_summary.json", "quantization summary", required=False) or {}
    run.env = _read_json(d / "env.json", "environment", required=False) or {}
    audit = _read_json(d / "audit.json", "audit", required=False)
    run.audit = audit if isinstance(audit, dict) else ({"checks": audit} if isinstance(audit, list) else None)
    run.metrics, bad = read_metrics(d / "metrics.jsonl")
    if bad:
        run.warnings.append(f"{d / 'metrics.jsonl'}: skipped {bad} unreadable line(s)")
    if not run.metrics:
        run.warnings.append(f"{d / 'metrics.jsonl'}: no training metrics (curves omitted for seed {run.seed})")
    return run


_STATUS = {"PASS": "PASS", "PASSED": "PASS", "OK": "PASS", "TRUE": "PASS", "FAIL": "FAIL", "FAILED": "FAIL",
           "ERROR": "FAIL", "FALSE": "FAIL", "SKIP": "SKIP", "SKIPPED": "SKIP", "N/A": "SKIP", "NA": "SKIP"}


def audit_status(audit: dict | None) -> dict:
    """Tolerant reading of audit.json -> {status: PASS|FAIL|not audited, passed, failed, skipped, checks}.

    A top-level boolean "passed" (or "ok"), else a top-level "status" PASS/FAIL (what `pgolf audit` writes),
    decides when present; otherwise any FAIL check fails the audit,
    and an audit with no checks at all reads as not audited. Checks may be a list of {name, status} or a
    {name: status | {status}} mapping; statuses are matched case-insensitively (PASS/OK, FAIL/ERROR, SKIP).
    """
    if audit is None:
        return {"status": NOT_AUDITED, "passed": None, "failed": [], "skipped": [], "checks": 0}
    raw = audit.get("checks", [])
    items: list[tuple[str, Any]] = []
    if isinstance(raw, dict):
        items = list(raw.items())
    elif isinstance(raw, list):
        for i, c in enumerate(raw):
            if isinstance(c, dict):
                items.append((str(c.get("name", c.get("check", f"check {i + 1}"))), c))
            else:
                items.append((f"check {i + 1}", c))
    checks: list[tuple[str, str]] = []
    for name, c in items:
        s = c.get("status", c.get("result", c.get("passed", c.get("ok")))) if isinstance(c, dict) else c
        checks.append((str(name), _STATUS.get(str(s).strip().upper(), "FAIL" if s is False else "UNKNOWN")))
    failed = [n for n, s in checks if s == "FAIL"]
    skipped = [n for n, s in checks if s == "SKIP"]
    top = audit.get("passed", audit.get("ok"))
    word = _STATUS.get(str(audit.get("status", "")).strip().upper())
    if isinstance(top, bool):
        passed: bool | None = top
    elif word in ("PASS", "FAIL"):  # the auditor's own top-level "status"
        passed = word == "PASS"
    elif checks:
        passed = not failed
    else:
        passed = None
    status = NOT_AUDITED if passed is None else ("PASS" if passed else "FAIL")
    return {"status": status, "passed": passed, "failed": failed, "skipped": skipped, "checks": len(checks)}


def _hardware(env: dict) -> str:
    ws = int(env.get("world_size") or 1)
    gpu = env.get("gpu")
    return f"{ws}x{gpu}" if gpu else (f"{ws}x CPU" if ws > 1 else "CPU")


def _on_target(env: dict, target: str) -> bool:
    """Whether env.json's hardware is the budget's target: "8xH100 SXM" = 8 ranks on H100 GPUs; a CPU target
    ("any CPU", "2-core CPU") = no GPU (and that many cores when named)."""
    target = target or ""
    gpu = str(env.get("gpu") or "")
    if "cpu" in target.lower():
        cores = re.search(r"(\d+)\s*-?\s*core", target)
        return not gpu and (cores is None or env.get("cpu_count") == int(cores.group(1)))
    m = re.match(r"\s*(\d+)\s*x\s*(\S+)", target)
    if not m or not gpu:
        return False
    return int(env.get("world_size") or 1) == int(m.group(1)) and m.group(2).lower() in gpu.lower()


def _eval_seconds(run: Run) -> float | None:
    for r in run.modes.values():
        if isinstance(r.get("eval_seconds_total"), int | float):
            return float(r["eval_seconds_total"])
    secs = [r["seconds"] for r in run.modes.values() if isinstance(r.get("seconds"), int | float)]
    if secs:
        return float(sum(secs))
    return run.timings.get("score")


def run_facts(run: Run) -> dict:
    """The per-seed row of every table (and of report.json's `runs`)."""
    r, s = run.results, run.summary
    steps = int(r["steps"])
    train_s = float(r.get("train_seconds", s.get("train_seconds", math.nan)))
    step_ms = s.get("step_avg_ms")
    if not isinstance(step_ms, int | float):
        step_ms = train_s * 1000.0 / steps if steps else math.nan
    audit = audit_status(run.audit)
    modes = {}
    for m, v in run.modes.items():
        modes[m] = {"val_loss": float(v["val_loss"]), "val_bpb": float(v["val_bpb"]),
                    "label": str(v.get("label", "compliant" if v.get("compliant", True) else "NON-COMPLIANT")),
                    "compliant": bool(v.get("compliant", False)), "seconds": v.get("seconds"),
                    "targets": v.get("targets"), "bytes": v.get("bytes"), "partial": v.get("partial")}
    notes = []
    if audit["status"] == NOT_AUDITED:
        notes.append(NOT_AUDITED)
    else:
        a = f"audit {audit['status']}"
        if audit["failed"]:
            a += ": " + ", ".join(audit["failed"])
        elif audit["skipped"]:
            a += f" ({len(audit['skipped'])} skipped)"
        notes.append(a)
    notes += [f"{m}: {v['label']}" for m, v in modes.items() if v["label"] != "compliant"]
    if not r.get("within_limit", True):
        notes.append("OVER the byte limit")
    if any(v["partial"] for v in modes.values()):
        notes.append(PARTIAL_NOTE)
    budget = run.cfg.budget
    return {
        "run_dir": str(run.path), "seed": run.seed, "preset": r.get("preset", run.cfg.preset),
        "config_hash": r.get("config_hash"), "steps": steps, "step_avg_ms": float(step_ms),
        "train_seconds": train_s, "charged_train_seconds": float(s.get("charged_seconds", train_s)),
        "eval_seconds": _eval_seconds(run), "stopped_by": r.get("stopped_by"),
        "model_bytes": r.get("artifact_bytes"), "code_bytes": r.get("code_bytes"),
        "total_bytes": int(r["total_bytes"]), "within_limit": bool(r.get("within_limit", True)),
        "limit_bytes": int(run.quant.get("limit_bytes", budget.artifact_bytes_limit)),
        "compressor": r.get("compressor"), "results_compliant": bool(r.get("compliant", False)),
        "modes": modes, "audit": audit, "compliance": "; ".join(notes),
        "hardware": _hardware(run.env), "on_target_hardware": _on_target(run.env, budget.target_hardware),
        "pytorch_version": run.env.get("torch"), "cuda_version": run.env.get("cuda"),
        "git_sha": run.env.get("git_sha"),
    }


def _cfg_key(cfg) -> dict:

    flat = flatten(cfg)
    for k in ("seed", "run_id"):
        flat.pop(k, None)
    return flat


def consistency_warnings(runs: list[Run]) -> list[str]:
    """Seeds of one submission must share the config (but the seed) and the code (docs/DESIGN.md#record-test)."""
    out = []
    seeds = [r.seed for r in runs]
    dup = sorted({s for s in seeds if seeds.count(s) > 1})
    if dup:
        out.append(f"seed(s) {', '.join(map(str, dup))} appear more than once: repeated seeds are not independent")
    ref = _cfg_key(runs[0].cfg)
    for r in runs[1:]:
        other = _cfg_key(r.cfg)
        keys = sorted(k for k in set(ref) | set(other) if ref.get(k) != other.get(k))
        if keys:
            shown = ", ".join(keys[:6]) + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")
            out.append(f"{r.path}: config differs from {runs[0].path} in {shown}")
    shas = {r.env.get("git_sha") for r in runs if r.env.get("git_sha")}
    if len(shas) > 1:
        out.append(f"the runs come from {len(shas)} different code versions (env.json git_sha)")
    return out


# ------------------------------------------------------------------------------------------------ baseline


@dataclass
class Baseline:
    """Per-seed val_loss values (nats) of the comparison, or its summary statistics."""

    source: str
    kind: str
    """'values', 'runs' or 'submission'."""
    mean: float
    std: float
    n: int
    values: list[float] | None = None
    val_bpb_mean: float | None = None
    mode: str | None = None
    partial: bool = False
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {k: _clean(v) for k, v in self.__dict__.items()}


_NUMBERS = re.compile(r"^[\s\d.,eE+-]+$")


def _finite(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def parse_values(spec: str) -> list[float]:
    """"1.23,1.24,1.22" -> per-seed val_loss values (nats)."""
    try:
        vals = [float(x) for x in spec.replace(";", ",").split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--baseline {spec!r}: expected comma-separated val_loss values in nats") from None
    if not vals or not all(math.isfinite(v) and v > 0 for v in vals):
        raise ConfigError(f"--baseline {spec!r}: expected positive, finite val_loss values in nats")
    return vals


def baseline_from_submission(path: Path) -> Baseline:
    """A record's submission.json (docs/DESIGN.md#submission-json): per-seed val_loss from `seed_results`, else per-seed
    val_bpb converted with the record's own val_loss / val_bpb ratio, else `val_loss`, `val_loss_std` and
    the number of `seeds`."""
    d = _read_json(path, "baseline submission")
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: not a submission.json (expected a JSON object)")
    sr = d.get("seed_results")
    rows = list(sr.values()) if isinstance(sr, dict) else (sr if isinstance(sr, list) else [])
    rows = [x for x in rows if isinstance(x, dict)]
    label = d.get("name") or path.parent.name
    src = f"{path} ({label})" if label else str(path)
    partial = bool(d.get("partial"))
    bpb = d.get("val_bpb") if _finite(d.get("val_bpb")) else None
    losses = [x.get("val_loss") for x in rows]
    if len(rows) >= 2 and all(_finite(v) for v in losses):
        m, s = mean_std(losses)
        return Baseline(src, "submission", m, s, len(losses), values=[float(v) for v in losses], val_bpb_mean=bpb,
                        partial=partial, notes=["per-seed val_loss from seed_results"])
    bpbs = [x.get("val_bpb") for x in rows]
    if len(rows) >= 2 and all(_finite(v) for v in bpbs) and _finite(d.get("val_loss")) and bpb:
        ratio = d["val_loss"] / bpb
        vals = [float(v) * ratio for v in bpbs]
        m, s = mean_std(vals)
        return Baseline(src, "submission", m, s, len(vals), values=vals, val_bpb_mean=bpb, partial=partial,
                        notes=[f"per-seed val_bpb converted to nats with the record's val_loss/val_bpb = {ratio:.7f}"])
    seeds = d.get("seeds")
    n = len(seeds) if isinstance(seeds, list) else (seeds if isinstance(seeds, int) else 0)
    if _finite(d.get("val_loss")) and _finite(d.get("val_loss_std")) and n >= 2:
        return Baseline(src, "submission", float(d["val_loss"]), float(d["val_loss_std"]), n, val_bpb_mean=bpb,
                        partial=partial, notes=["summary statistics (val_loss, val_loss_std, seeds)"])
    raise ConfigError(f"{path}: no per-seed val_loss in seed_results and no val_loss + val_loss_std + seeds: "
                      "cannot run a Welch test")


def _find_runs(d: Path) -> list[Path]:
    if (d / "results.json").is_file():
        return [d]
    return sorted(p.parent for p in d.glob("*/results.json"))


def load_baseline(specs: list[str], mode: str | None = None) -> Baseline:
    """--baseline FILE|DIR|VALUES (repeatable): a submission.json (or a record folder holding one), run
    directories or a folder of them, or comma-separated per-seed val_loss values in nats."""
    specs = [s for s in specs if s.strip()]
    if not specs:
        raise ConfigError("--baseline: empty")
    values: list[float] = []
    run_dirs: list[Path] = []
    subs: list[Path] = []
    for spec in specs:
        p = Path(spec)
        if p.is_file():
            subs.append(p)
        elif p.is_dir():
            found = _find_runs(p)
            if found:
                run_dirs += found
            elif (p / "submission.json").is_file():
                subs.append(p / "submission.json")
            else:
                raise FileNotFoundError(f"{p}: no results.json, */results.json or submission.json for --baseline")
        elif _NUMBERS.match(spec):
            values += parse_values(spec)
        else:
            raise FileNotFoundError(f"{spec}: baseline not found (expected a submission.json, a run directory, "
                                    "a folder of run directories, or comma-separated val_loss values in nats)")
    if subs and (len(subs) > 1 or values or run_dirs):
        raise ConfigError("--baseline: a submission.json cannot be combined with other baselines")
    if subs:
        return baseline_from_submission(subs[0])
    if values and run_dirs:
        raise ConfigError("--baseline: give either run directories or values, not both")
    if values:
        if len(values) < 2:
            raise ConfigError(f"--baseline {specs[0]!r}: a Welch test needs at least 2 per-seed values")
        m, s = mean_std(values)
        return Baseline(", ".join(specs), "values", m, s, len(values), values=values)
    runs = [load_run(d) for d in dict.fromkeys(p.resolve() for p in run_dirs)]
    bmode = mode if mode and all(mode in r.modes for r in runs) else runs[0].cfg.score.modes[-1]
    missing = [str(r.path) for r in runs if bmode not in r.modes]
    if missing:
        raise ConfigError(f"{missing[0]}: baseline run has no {bmode!r} score")
    if len(runs) < 2:
        raise ConfigError(f"{runs[0].path}: a Welch test needs at least 2 baseline runs (seeds)")
    vals = [float(r.modes[bmode]["val_loss"]) for r in runs]
    m, s = mean_std(vals)
    bpb, _ = mean_std([r.modes[bmode]["val_bpb"] for r in runs])
    notes = [f"mode {bmode}, seeds {', '.join(str(r.seed) for r in runs)}"]
    if mode and bmode != mode:
        notes.append(f"the baseline runs have no {mode!r} score: compared with their {bmode!r} score")
    partial = any("partial" in r.modes[bmode] for r in runs)
    src = str(Path(os.path.commonpath([str(r.path) for r in runs]))) if len(runs) > 1 else str(runs[0].path)
    return Baseline(src, "runs", m, s, len(runs), values=vals, val_bpb_mean=bpb, mode=bmode, partial=partial,
                    notes=notes)


def significance(ours: list[float], base: Baseline, ratio: float | None = None) -> dict:
    """The record test (one-sided Welch, margin MARGIN_NATS, p < ALPHA) and the same test without margin."""
    m, s = mean_std(ours)
    args = (m, s, len(ours), base.mean, base.std, base.n)
    t, df, p = welch_from_stats(*args, delta=-MARGIN_NATS, alternative="less")
    t0, df0, p0 = welch_from_stats(*args, delta=0.0, alternative="less")
    tt, _, pt = welch_from_stats(*args, delta=0.0, alternative="two-sided")
    ok = bool(p < ALPHA)
    d = m - base.mean
    verdict = (f"improvement of at least {MARGIN_NATS} nats shown at p < {ALPHA}" if ok else
               f"improvement of at least {MARGIN_NATS} nats NOT shown at p < {ALPHA}")
    res = {
        "test": "Welch one-sided two-sample t-test (docs/DESIGN.md#record-test)",
        "h0": f"mean_ours - mean_baseline >= -{MARGIN_NATS} nats", "margin_nats": MARGIN_NATS, "alpha": ALPHA,
        "n_ours": len(ours), "n_baseline": base.n, "mean_ours": m, "std_ours": s, "mean_baseline": base.mean,
        "std_baseline": base.std, "delta_nats": d, "t": t, "df": df, "p": p, "significant": ok,
        "verdict": verdict,
        "no_margin": {"h0": "mean_ours - mean_baseline >= 0", "t": t0, "df": df0, "p": p0,
                      "significant_progression": bool(p0 < PROGRESSION_ALPHA), "alpha_progression": PROGRESSION_ALPHA},
        "two_sided_vs_zero": {"t": tt, "p": pt},
    }
    if ratio:
        res["nats_per_bpb"] = ratio
        res["margin_bpb"] = MARGIN_NATS / ratio
        res["delta_bpb"] = d / ratio
    if base.partial:
        res["verdict"] += " (the baseline is a partial score)"
    return res


# ------------------------------------------------------------------------------------------------ aggregation


def primary_mode(runs: list[Run], mode: str | None = None) -> str:
    """--mode, else the last of the first run's score.modes; it must be scored in every run."""
    m = mode or runs[0].cfg.score.modes[-1]
    for r in runs:
        if m not in r.modes:
            raise ConfigError(f"{r.path / 'results.json'}: no {m!r} score (scored: {', '.join(r.modes)})")
    return m


def build_report(run_dirs, baseline: list[str] | None = None, mode: str | None = None,
                 baseline_mode: str | None = None) -> dict:
    """Parse the runs (and the baseline), aggregate and test: -> the report dict (report.json's content)."""
    if not run_dirs:
        raise ConfigError("no run directories given")
    paths = []
    for p in map(Path, run_dirs):  # a folder of run directories (`pgolf run --seeds ... --out DIR`) expands
        found = _find_runs(p) if p.is_dir() else []
        paths += found if found and found != [p] else [p]
    seen: dict[Path, Path] = {}
    for p in paths:
        rp = p.resolve()
        if rp in seen:
            raise ConfigError(f"{p}: given twice")
        seen[rp] = p
    runs = sorted((load_run(p) for p in paths), key=lambda r: r.seed)
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
    rep["_runs"] = runs  # for the plots; dropped from report.json
    return rep


def compliance(runs: list[Run], facts: list[dict], prim: str) -> dict:
    """The record compliance booleans (docs/DESIGN.md#submission-json, as in the 2026-04-09 record), for the primary mode.

    Time budgets compare the measured seconds with the config's limits; `measured_on_target_hardware` says
    whether those seconds mean anything for the challenge. pgolf has no ETLB and no n-gram cache mode, so
    those two hold by construction; `score_first_ttt` holds when TTT is not used or is score-first.
    """
    cfgs = [r.cfg for r in runs]
    uses_slot = prim in ("slot", "ttt+slot")
    uses_ttt = prim in ("ttt", "ttt+slot")
    evals = [f["eval_seconds"] for f in facts]
    c = {
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
    return c


# ------------------------------------------------------------------------------------------------ formatting


def _clean(v):
    """JSON-safe: nan/inf -> None, recursively."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_clean(x) for x in v]
    return v


def _f(x, nd: int = 6) -> str:
    return f"{x:.{nd}f}" if isinstance(x, int | float) and math.isfinite(x) else "-"


def _i(x) -> str:
    return f"{x:,.0f}" if isinstance(x, int | float) and math.isfinite(x) else "-"


def _p(p) -> str:
    if not isinstance(p, int | float) or not math.isfinite(p):
        return "-"
    return f"{p:.2e}" if p < 1e-4 else f"{p:.4f}"


def tables(rep: dict) -> list[tuple[list[str], list[list[str]]]]:
    """The runs table and the scores table as (headers, rows)."""
    facts = rep["runs"]
    runs_h = ["seed", "steps", "ms/step", "train s", "eval s", "total bytes", "compliance"]
    runs_rows = [[str(f["seed"]), _i(f["steps"]), _f(f["step_avg_ms"], 1), _f(f["train_seconds"], 1),
                  _f(f["eval_seconds"], 1), _i(f["total_bytes"]), f["compliance"] or "-"] for f in facts]
    a = rep["aggregate"]
    for k in ("mean", "max"):
        runs_rows.append([k, _i(a["steps"][k]), _f(a["step_avg_ms"][k], 1), _f(a["train_seconds"][k], 1),
                          _f(a["eval_seconds"][k], 1), _i(a["total_bytes"][k]), ""])
    modes = list(rep["modes"])
    sc_h = ["seed"]
    for m in modes:
        star = "*" if m == rep["primary_mode"] else ""
        sc_h += [f"{m}{star} val_loss", f"{m}{star} val_bpb"]
    sc_rows = []
    for f in facts:
        row = [str(f["seed"])]
        for m in modes:
            v = f["modes"].get(m)
            row += [_f(v["val_loss"]), _f(v["val_bpb"])] if v else ["-", "-"]
        sc_rows.append(row)
    for key, label in (("mean", "mean"), ("std", "std")):
        row = [label]
        for m in modes:
            s = rep["modes"][m]
            row += [_f(s[f"val_loss_{key}"]), _f(s[f"val_bpb_{key}"])]
        sc_rows.append(row)
    return [(runs_h, runs_rows), (sc_h, sc_rows)]


def text_table(headers: list[str], rows: list[list[str]]) -> str:
    w = [max(len(headers[i]), *(len(r[i]) for r in rows)) for i in range(len(headers))]
    last = len(headers) - 1

    def line(cells):
        return "  ".join(c.ljust(w[i]) if i == 0 or (i == last and headers[i] == "compliance") else c.rjust(w[i])
                         for i, c in enumerate(cells)).rstrip()

    return "\n".join([line(headers), line(["-" * x for x in w])] + [line(r) for r in rows])


def md_table(headers: list[str], rows: list[list[str]]) -> str:
    align = ["---"] + ["---:" if h != "compliance" else "---" for h in headers[1:]]
    esc = [[c.replace("|", "\\|") for c in r] for r in rows]
    return "\n".join(["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
                     + ["| " + " | ".join(r) + " |" for r in esc])


def stats_paragraph(rep: dict, markdown: bool = False) -> str:
    sig, base = rep["significance"], rep["baseline"]
    b = "**" if markdown else ""
    if sig is None:
        return ("No baseline given: significance not tested (pass --baseline with a submission.json, run "
                "directories or per-seed val_loss values in nats).")
    dbpb = sig.get("delta_bpb_measured", sig.get("delta_bpb"))
    conv = (f" (for this tokenizer {MARGIN_NATS} nats = {sig['margin_bpb']:.5f} BPB)" if sig.get("margin_bpb")
            else "")
    no = sig["no_margin"]
    notes = f" [{'; '.join(base['notes'])}]" if base.get("notes") else ""
    return (f"One-sided Welch t-test (docs/DESIGN.md#record-test) of H0: mean val_loss(ours) - mean val_loss(baseline) "
            f">= -{MARGIN_NATS} nats{conv}. Ours: {sig['n_ours']} seeds, mean {sig['mean_ours']:.8f} nats "
            f"(std {_f(sig['std_ours'], 8)}); baseline {base['source']}: n = {sig['n_baseline']}, mean "
            f"{sig['mean_baseline']:.8f} (std {_f(sig['std_baseline'], 8)}){notes}. Delta {sig['delta_nats']:+.8f} "
            f"nats" + (f" ({dbpb:+.8f} BPB)" if dbpb is not None else "") +
            f". t = {sig['t']:.2f}, Welch df = {sig['df']:.2f}, p = {_p(sig['p'])}: {b}{sig['verdict']}{b}. "
            f"Without the margin (H0: no improvement): t = {no['t']:.2f}, p = {_p(no['p'])}"
            f" ({'below' if no['significant_progression'] else 'not below'} the p < {PROGRESSION_ALPHA} "
            "progression cutoff of PR #1902).")


def format_text(rep: dict, out: Path | None = None) -> str:
    prim, ps = rep["primary_mode"], rep["modes"][rep["primary_mode"]]
    head = (f"pgolf report: {len(rep['runs'])} run(s), preset {rep['preset']}, seeds "
            f"{', '.join(map(str, rep['seeds']))}; primary mode {prim} (*)")
    lines = [head]
    if rep["partial"]:
        lines.append(f"WARNING: partial score ({_partial_what(rep['partial'])}): not a challenge score")
    (rh, rr), (sh, sr) = tables(rep)
    lines += ["", text_table(rh, rr), "", text_table(sh, sr), ""]
    lines.append(f"score ({prim}): val_bpb {_f(ps['val_bpb_mean'], 8)} (std {_f(ps['val_bpb_std'], 8)}), "
                 f"val_loss {_f(ps['val_loss_mean'], 8)} nats (std {_f(ps['val_loss_std'], 8)}); "
                 f"max {_i(rep['aggregate']['total_bytes']['max'])} bytes")
    sig = rep["significance"]
    if sig:
        lines.append(f"vs baseline {rep['baseline']['source']}: delta {sig['delta_nats']:+.6f} nats, "
                     f"t = {sig['t']:.2f}, df = {sig['df']:.2f}, p = {_p(sig['p'])} -> {sig['verdict']}")
    else:
        lines.append("no baseline: significance not tested (--baseline)")
    c = rep["compliance"]
    bad = [k for k, v in c.items() if v is False]
    lines.append("compliance: " + ("all flags true" if not bad else "false: " + ", ".join(bad)))
    for w in rep["warnings"]:
        lines.append(f"warning: {w}")
    if out is not None:
        names = ", ".join(list(REPORT_FILES) + list(rep.get("plots", {}).values()))
        lines.append(f"wrote {out}/: {names}")
    return "\n".join(lines)


def submission(rep: dict, *, name: str = "", author: str = "", github_id: str = "", blurb: str = "",
               track: str = "10min_16mb", baseline_pr: int | None = None) -> dict:
    """submission.json with the fields of docs/DESIGN.md#submission-json (val_* = the primary mode's seed means)."""
    prim, ps, facts = rep["primary_mode"], rep["modes"][rep["primary_mode"]], rep["runs"]
    runs: list[Run] = rep.get("_runs", [])
    a = rep["aggregate"]
    totals = [f["total_bytes"] for f in facts]
    env = runs[0].env if runs else {}
    q = runs[0].quant if runs else {}
    cal = q.get("calibration") or {}
    calib = (f"{cal.get('source', '?')} ({cal.get('seqs', '?')} seqs x {cal.get('seq_len', '?')} tokens"
             + (f", temp={cal['temperature']}" if "temperature" in cal else "") + ")") if cal else None

    technique = (f"pgolf {pgolf.__version__} preset {rep['preset']}: {q.get('method', '?')} "
                 f"int{q.get('matrix_bits', '?')} matrices / int{q.get('embed_bits', '?')} tables, "
                 f"{facts[0].get('compressor') or '?'}; scored with {prim}")
    sig = rep["significance"]
    auto_blurb = (f"{len(facts)}-seed mean {prim} val_bpb {ps['val_bpb_mean']:.8f} / val_loss "
                  f"{ps['val_loss_mean']:.8f} nats")
    if sig:
        auto_blurb += (f"; vs baseline {sig['delta_nats']:+.8f} nats (Welch t={sig['t']:.2f}, df={sig['df']:.2f}, "
                       f"one-sided p={_p(sig['p'])} with the {MARGIN_NATS}-nat margin)")
    if rep["partial"]:
        auto_blurb += f". {PARTIAL_NOTE.upper()}"
    sub: dict[str, Any] = {
        "author": author, "github_id": github_id, "name": name or f"pgolf {rep['preset']}",
        "blurb": blurb or auto_blurb, "date": datetime.date.today().isoformat(), "track": track,
        "val_loss": round(ps["val_loss_mean"], 8), "val_bpb": round(ps["val_bpb_mean"], 8),
        "val_loss_std": _round(ps["val_loss_std"]), "val_bpb_std": _round(ps["val_bpb_std"]),
        "seeds": [f["seed"] for f in facts],
        "seed_results": {str(f["seed"]): {
            "val_loss": round(f["modes"][prim]["val_loss"], 8), "val_bpb": round(f["modes"][prim]["val_bpb"], 8),
            "artifact_bytes": f["total_bytes"], "model_bytes": f["model_bytes"], "steps": f["steps"],
            "step_avg_ms": round(f["step_avg_ms"], 2),
            "eval_time_s": _round(f["modes"][prim]["seconds"], 2)} for f in facts},
        "bytes_total": max(totals), "bytes_code": max(f["code_bytes"] or 0 for f in facts),
        "artifact_bytes_mean": round(statistics.fmean(totals)), "artifact_bytes_max": max(totals),
        "train_steps_mean": round(a["steps"]["mean"], 2), "step_avg_ms_mean": round(a["step_avg_ms"]["mean"], 2),
        "eval_mode": prim,
        "hardware": facts[0]["hardware"], "pytorch_version": env.get("torch"), "cuda_version": env.get("cuda"),
        "flash_attn_version": env.get("flash_attn"), "calibration": calib, "technique_summary": technique,
    }
    if baseline_pr is not None:
        sub["comparison_baseline_pr"] = baseline_pr
    if sig:
        sub["delta_vs_baseline_nats"] = round(sig["delta_nats"], 8)
        dbpb = sig.get("delta_bpb_measured", sig.get("delta_bpb"))
        sub["delta_vs_baseline_bpb"] = _round(dbpb)
        sub["t_statistic"] = _round(sig["t"], 4)
        sub["welch_df"] = _round(sig["df"], 4)
        sub["p_value"] = _clean(sig["p"])
        sub["significant_at_0.01"] = sig["significant"]
    if rep["partial"]:
        sub["partial"] = f"{_partial_what(rep['partial'])}: not a challenge score"
    sub["compliance"] = rep["compliance"]
    return _clean(sub)


def _partial_what(note) -> str:
    """'first 8192 validation tokens only: not a challenge score' -> 'first 8192 validation tokens only'."""
    return str(note).split(":")[0].strip()


def _round(x, nd: int = 8):
    return round(x, nd) if isinstance(x, int | float) and math.isfinite(x) else None


def readme(rep: dict, sub: dict) -> str:
    prim, ps = rep["primary_mode"], rep["modes"][rep["primary_mode"]]
    (rh, rr), (sh, sr) = tables(rep)
    parts = [f"# {sub['name']}", "",
             f"**val_bpb: {_f(ps['val_bpb_mean'], 8)}** ({len(rep['runs'])}-seed mean of `{prim}`, std "
             f"{_f(ps['val_bpb_std'], 8)}; val_loss {_f(ps['val_loss_mean'], 8)} nats) | **{_i(sub['bytes_total'])} "
             f"bytes** (max over seeds) | {sub['hardware']}", ""]
    if rep["partial"]:
        parts += [f"> **Partial score: not a challenge score.** Scored on the {_partial_what(rep['partial'])}.", ""]
    parts += ["## Runs", "", md_table(rh, rr), "",
              "total bytes = code + compressed model (decimal; the cap is 16,000,000). "
              "train s = training wallclock; eval s = all scoring passes of the run.", "",
              "## Scores", "", md_table(sh, sr), "",
              f"val_loss in nats/token, val_bpb in bits/byte, scored from the artifact on disk; `*` = the primary "
              f"mode (`{prim}`), the one submitted. std = sample standard deviation (ddof = 1).", "",
              "## Statistics", "", stats_paragraph(rep, markdown=True), "", "## Compliance", ""]
    for k, v in rep["compliance"].items():
        parts.append(f"- `{k}`: {'n/a' if v is None else str(v).lower()}")
    if not rep["compliance"]["measured_on_target_hardware"]:
        parts += ["", f"Time budgets were measured on {sub['hardware']}, not on the target hardware: "
                      "they say nothing about the challenge's 600 s limits."]
    if rep["warnings"]:
        parts += ["", "## Warnings", ""] + [f"- {w}" for w in rep["warnings"]]
    cfg = rep["_runs"][0].cfg if rep.get("_runs") else None
    if cfg is not None:

        if cfg.preset in PRESETS:
            d = {k: v for k, v in diff(cfg, get_preset(cfg.preset)).items() if k not in ("seed", "run_id")}
            parts += ["", "## Configuration", "", f"Preset `{cfg.preset}` with these overrides:", ""]
            parts += [f"- `{k}`: {a!r} -> {b!r}" for k, (a, b) in d.items()] or ["- (none)"]
    if rep.get("plots"):
        titles = {"train_loss": "Training loss over steps and time", "val_bpb": "Validation BPB during training",
                  "bpb_by_mode": "BPB per evaluation mode", "artifact_bytes": "Submission bytes against the cap"}
        parts += ["", "## Plots", ""]
        for k, fn in rep["plots"].items():
            parts += [f"### {titles.get(k, k)}", "", f"![{titles.get(k, k)}]({fn})", ""]
    return "\n".join(parts).rstrip() + "\n"


# ------------------------------------------------------------------------------------------------ plots


def _new_figure(key: str, ncols: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=PLOT_SIZE[key], dpi=PLOT_DPI)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.set_axisbelow(True)
    return fig, axes


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def _figure_legend(fig, handles, labels) -> None:
    """One legend for all panels, below them (it never hides a curve); then tight_layout above it."""
    if handles:
        ncol = min(len(handles), 6)
        rows = math.ceil(len(handles) / ncol)
        fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=9, frameon=False)
        fig.tight_layout(rect=(0, 0.045 + 0.045 * rows, 1, 1))
    else:
        fig.tight_layout()


def _smooth(ys: list[float], k: int) -> list[float]:
    out, acc = [], 0.0
    for i, y in enumerate(ys):
        acc += y
        if i >= k:
            acc -= ys[i - k]
        out.append(acc / min(i + 1, k))
    return out


def plot_train_loss(runs: list[Run], path: Path, preset: str) -> None:
    fig, (a1, a2) = _new_figure("train_loss", 2)
    smoothed = False
    for run, c in zip(runs, _colors(len(runs)), strict=True):
        tr = [m for m in run.metrics if m.get("kind") == "train" and _finite(m.get("train_loss"))]
        if not tr:
            continue
        steps = [m["step"] for m in tr]
        times = [m.get("train_time_s", math.nan) for m in tr]
        loss = [m["train_loss"] for m in tr]
        if len(tr) > 200:
            smoothed = True
            k = max(2, len(tr) // 50)
            sm = _smooth(loss, k)
            for ax, x in ((a1, steps), (a2, times)):
                ax.plot(x, loss, color=c, alpha=0.2, linewidth=0.6)
                ax.plot(x, sm, color=c, linewidth=1.6, label=f"seed {run.seed}")
        else:
            for ax, x in ((a1, steps), (a2, times)):
                ax.plot(x, loss, color=c, linewidth=1.4, marker="." if len(tr) <= 60 else None,
                        label=f"seed {run.seed}")
    a1.set_xlabel("training step")
    a2.set_xlabel("training time (s, wallclock)")
    for ax, t in ((a1, "by step"), (a2, "by training time")):
        ax.set_ylabel("training loss (nats/token)")
        ax.set_title(f"Training loss {t}")
    note = " (thin: raw, bold: moving average)" if smoothed else ""
    fig.suptitle(f"{preset}: training loss per seed{note}", fontsize=12)
    _figure_legend(fig, *a1.get_legend_handles_labels())
    fig.savefig(path)


def plot_val_bpb(runs: list[Run], path: Path, preset: str) -> None:
    from matplotlib.lines import Line2D

    fig, (a1, a2) = _new_figure("val_bpb", 2)
    any_raw = False
    for run, c in zip(runs, _colors(len(runs)), strict=True):
        vals = [m for m in run.metrics if m.get("kind") == "val" and _finite(m.get("val_bpb"))]
        if not vals:
            continue
        has_ema = any(m.get("tag") == "final_ema" for m in vals)
        main = [m for m in vals if not (has_ema and m.get("tag") == "final_raw")]
        raw = [m for m in vals if has_ema and m.get("tag") == "final_raw"]
        any_raw = any_raw or bool(raw)
        for ax, key in ((a1, "step"), (a2, "train_time_s")):
            ax.plot([m.get(key, math.nan) for m in main], [m["val_bpb"] for m in main], color=c, marker="o",
                    markersize=4, linewidth=1.4, label=f"seed {run.seed}")
            if raw:
                ax.plot([m.get(key, math.nan) for m in raw], [m["val_bpb"] for m in raw], color=c, marker="x",
                        linestyle="none", markersize=7)
    a1.set_xlabel("training step")
    a2.set_xlabel("training time (s, wallclock)")
    for ax, t in ((a1, "by step"), (a2, "by training time")):
        ax.set_ylabel("validation BPB (bits/byte)")
        ax.set_title(f"Validation BPB {t}")
    handles, labels = a1.get_legend_handles_labels()
    if any_raw:
        handles.append(Line2D([], [], color="gray", marker="x", linestyle="none", markersize=7))
        labels.append("final weights before EMA (the line ends at the EMA weights)")
    fig.suptitle(f"{preset}: validation BPB during training (float weights, before quantization)", fontsize=12)
    _figure_legend(fig, handles, labels)
    fig.savefig(path)


def plot_bpb_by_mode(rep: dict, path: Path) -> None:
    fig, (ax,) = _new_figure("bpb_by_mode", 1)
    modes = list(rep["modes"])
    facts = rep["runs"]
    colors = _colors(len(facts))
    n = len(facts)
    for j, (f, c) in enumerate(zip(facts, colors, strict=True)):
        off = (j - (n - 1) / 2) * (0.25 / max(n - 1, 1)) if n > 1 else 0.0
        xs = [i + off for i, m in enumerate(modes) if m in f["modes"]]
        ys = [f["modes"][m]["val_bpb"] for m in modes if m in f["modes"]]
        ax.scatter(xs, ys, color=c, s=36, zorder=3, label=f"seed {f['seed']}")
    for i, m in enumerate(modes):
        s = rep["modes"][m]
        sd = s["val_bpb_std"] if math.isfinite(s["val_bpb_std"]) else 0.0
        ax.errorbar([i + 0.3], [s["val_bpb_mean"]], yerr=[sd], fmt="D", color="black", capsize=5, markersize=6,
                    zorder=4, label="mean ± std" if i == 0 else None)
        ax.annotate(f"{s['val_bpb_mean']:.4f}", (i + 0.36, s["val_bpb_mean"]), fontsize=9, va="center")
    base = rep.get("baseline")
    if base and base.get("val_bpb_mean"):
        ax.axhline(base["val_bpb_mean"], color="tab:red", linestyle="--", linewidth=1.2,
                   label=f"baseline mean {base['val_bpb_mean']:.4f}")
    ax.set_xticks(range(len(modes)))
    ax.set_xticklabels([f"{m}\n(primary)" if m == rep["primary_mode"] else m for m in modes])
    ax.set_xlim(-0.6, len(modes) - 0.2)
    ax.set_xlabel("evaluation mode")
    ax.set_ylabel("val BPB of the quantized artifact (bits/byte)")
    title = "Artifact score per evaluation mode"
    if rep["partial"]:
        title += f"\n(partial score, {_partial_what(rep['partial'])}: not a challenge score)"
    ax.set_title(title)
    ax.legend(fontsize=9, loc="best")
    fig.tight_layout()
    fig.savefig(path)


def plot_artifact_bytes(rep: dict, path: Path) -> None:
    from matplotlib.ticker import FuncFormatter

    fig, (ax, hx) = _new_figure("artifact_bytes", 2)
    facts = rep["runs"]
    cap = max(f["limit_bytes"] for f in facts)
    xs = list(range(len(facts)))
    model = [f["model_bytes"] or 0 for f in facts]
    code = [f["code_bytes"] or 0 for f in facts]
    totals = [f["total_bytes"] for f in facts]
    seeds = [f"seed {f['seed']}" for f in facts]
    ax.bar(xs, model, color="tab:blue", width=0.6, label="compressed model")
    ax.bar(xs, code, bottom=model, color="tab:orange", width=0.6, label="code (train_gpt.py)")
    ax.axhline(cap, color="tab:red", linestyle="--", linewidth=1.5, label=f"cap {cap:,} bytes")
    for x, t, m, c in zip(xs, totals, model, code, strict=True):
        if t > 0.45 * cap:  # tall bar: the total runs up inside it (the split is in the tables)
            ax.annotate(f"{t:,} bytes", (x, t / 2), ha="center", va="center", rotation=90, fontsize=9,
                        color="white", fontweight="bold" if t > cap else "normal")
        else:
            ax.annotate(f"{t:,} total\nmodel {m:,}\ncode {c:,}", (x, t), xytext=(0, 4), textcoords="offset points",
                        ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, max(cap, *totals) * 1.4)
    ax.set_xticks(xs)
    ax.set_xticklabels(seeds)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1e6:g}"))
    ax.set_ylabel("submission size (million bytes, decimal)")
    ax.set_xlabel("run")
    ax.set_title("Submission size (code + compressed model)")
    ax.legend(fontsize=8.5, loc="upper center", ncol=2)

    room = [cap - t for t in totals]
    hx.bar(xs, room, width=0.6, color=["tab:green" if r >= 0 else "tab:red" for r in room])
    hx.axhline(0, color="black", linewidth=1.0)
    for x, r, t in zip(xs, room, totals, strict=True):
        head = f"{r:,} byte{'' if r == 1 else 's'} left" if r >= 0 else f"OVER by {-r:,} bytes"
        label = f"{head}\n(the submission uses {t / cap:.2%} of the cap)"
        hx.annotate(label, (x, r), xytext=(0, 4 if r >= 0 else -4), textcoords="offset points", ha="center",
                    va="bottom" if r >= 0 else "top", fontsize=8.5, color="black" if r >= 0 else "tab:red")
    lo, hi = min(0, *room), max(0, *room)
    span = (hi - lo) or cap * 0.01
    hx.set_ylim(lo - 0.25 * span * (lo < 0), hi + 0.25 * span)
    hx.set_xticks(xs)
    hx.set_xticklabels(seeds)
    hx.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    hx.set_ylabel("headroom: cap - submission size (bytes)")
    hx.set_xlabel("run")
    over = sum(r < 0 for r in room)
    hx.set_title("Headroom under the cap" + (f": {over} seed(s) OVER" if over else ""))
    fig.suptitle(f"Submission bytes against the {cap:,}-byte cap", fontsize=12)
    fig.tight_layout()
    fig.savefig(path)


def write_plots(rep: dict, out: Path) -> dict[str, str]:
    runs = rep["_runs"]
    out.mkdir(parents=True, exist_ok=True)
    plot_train_loss(runs, out / PLOT_FILES["train_loss"], rep["preset"])
    plot_val_bpb(runs, out / PLOT_FILES["val_bpb"], rep["preset"])
    plot_bpb_by_mode(rep, out / PLOT_FILES["bpb_by_mode"])
    plot_artifact_bytes(rep, out / PLOT_FILES["artifact_bytes"])
    return dict(PLOT_FILES)


def png_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of a PNG file from its IHDR chunk."""
    head = Path(path).read_bytes()[:24]
    if head[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError(f"{path}: not a PNG")
    return struct.unpack(">II", head[16:24])


# ------------------------------------------------------------------------------------------------ entry points


def default_out(run_dirs) -> Path:
    """The common parent of the run directories, / report."""
    parents = [str(Path(p).resolve().parent) for p in run_dirs]
    return Path(os.path.commonpath(parents)) / "report"


def write_report(rep: dict, out: str | Path, *, plots: bool = True, **sub_fields) -> dict:
    """Write submission.json, README.md, report.json (and the plots) into `out`; -> the submission dict."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rep["plots"] = write_plots(rep, out) if plots else {}
    rep["out"] = str(out)
    sub = submission(rep, **sub_fields)
    (out / "submission.json").write_text(json.dumps(sub, indent=2) + "\n", encoding="utf-8")
    (out / "README.md").write_text(readme(rep, sub), encoding="utf-8")
    body = _clean({k: v for k, v in rep.items() if not k.startswith("_")} | {"submission": sub})
    (out / "report.json").write_text(json.dumps(body, indent=2, default=str) + "\n", encoding="utf-8")
    return sub


def report(run_dirs, *, baseline: list[str] | None = None, out: str | Path | None = None, mode: str | None = None,
           baseline_mode: str | None = None, plots: bool = True, **sub_fields) -> dict:
    """Library entry of `pgolf report`: -> the report dict (with `submission`), files written to `out`."""
    rep = build_report(run_dirs, baseline, mode=mode, baseline_mode=baseline_mode)
    out = Path(out) if out else default_out([f["run_dir"] for f in rep["runs"]])
    rep["submission"] = write_report(rep, out, plots=plots, **sub_fields)
    return rep


def cmd_report(args) -> int:
    rep = report(args.run_dirs, baseline=args.baseline, out=args.out, mode=args.mode,
                 baseline_mode=args.baseline_mode, plots=not args.no_plots, name=args.name, author=args.author,
                 github_id=args.github_id, blurb=args.blurb, track=args.track, baseline_pr=args.baseline_pr)
    if args.json:
        print(json.dumps(_clean({k: v for k, v in rep.items() if not k.startswith("_")}), indent=2, default=str))
    else:
        print(format_text(rep, Path(rep["out"])))
    return 0


def add_report_parser(verbs) -> argparse.ArgumentParser:
    """Add the `report` verb to the CLI's subparsers."""
    p = verbs.add_parser("report", help="aggregate seeds: tables, mean/std, Welch test vs a baseline, "
                                        "submission.json, README.md, plots")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                   help="run directories written by `pgolf run` (one per seed), or folders of them")
    p.add_argument("--baseline", action="append", default=[], metavar="FILE|DIR|VALUES",
                   help="a submission.json (or its folder), run directories (or a folder of them), or per-seed "
                        "val_loss values in nats, e.g. 1.8900,1.8913,1.8894 (repeatable)")
    p.add_argument("--mode", default=None, help="primary mode (default: the last of the runs' score.modes)")
    p.add_argument("--baseline-mode", default=None,
                   help="mode of baseline run directories (default: the primary mode if they have it, else theirs)")
    p.add_argument("--out", default=None, metavar="DIR", help="output folder (default: <common parent>/report)")
    p.add_argument("--name", default="", help="submission.json name")
    p.add_argument("--author", default="", help="submission.json author")
    p.add_argument("--github-id", default="", help="submission.json github_id")
    p.add_argument("--blurb", default="", help="submission.json blurb (default: generated from the numbers)")
    p.add_argument("--track", default="10min_16mb", help="submission.json track (default 10min_16mb)")
    p.add_argument("--baseline-pr", type=int, default=None, help="submission.json comparison_baseline_pr")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--json", action="store_true", help="print report.json instead of the text report")
    p.set_defaults(fn=cmd_report)
    return p
