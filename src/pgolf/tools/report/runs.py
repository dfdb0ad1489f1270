"""The seeds of a report: run directories read through `pgolf.rundir.Run`, and the per-seed facts.

Every file is read through the run-directory contract (docs/DESIGN.md#run-directory): results.json (required),
config.json, train_summary.json, quant_summary.json, env.json, timings.json, metrics.jsonl and, when the
auditor has run, audit.json. A missing or malformed file raises one line naming it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from pgolf.config import ConfigError, RunConfig, flatten
from pgolf.rundir import AUDIT, METRICS, RESULTS, QuantSummary, Results, Run, RunDirError, TrainSummary, load_config
from pgolf.telemetry import describe_hardware, hardware_matches

PARTIAL_NOTE = "partial: not a challenge score"
NOT_AUDITED = "not audited"
AUDIT_STATUSES = ("PASS", "FAIL", "SKIP")
"""What `pgolf audit` writes per check."""


@dataclass
class SeedRun:
    """One seed's run directory and its parsed records."""

    run: Run
    cfg: RunConfig
    results: Results
    summary: TrainSummary | None = None
    quant: QuantSummary | None = None
    env: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    metrics: list[dict] = field(default_factory=list)
    audit: dict | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return self.run.path

    @property
    def seed(self) -> int:
        return int(self.results.seed)

    @property
    def modes(self) -> dict[str, dict]:
        return self.results.modes


def find_runs(d: Path) -> list[Path]:
    """d itself when it is a scored run directory, else its scored subdirectories (sorted)."""
    if (d / RESULTS).is_file():
        return [d]
    return sorted(p.parent for p in d.glob(f"*/{RESULTS}"))


def _checked_audit(run: Run) -> dict | None:
    """audit.json as `Run.audit` validates it, with every check a {name, status} record."""
    audit = run.audit()
    if audit is not None:
        for i, c in enumerate(audit["checks"]):
            if not (isinstance(c, dict) and isinstance(c.get("name"), str) and c.get("status") in AUDIT_STATUSES):
                raise RunDirError(f"{run.file(AUDIT)}: check {i + 1} is not a {{name, status}} record "
                                  f"(re-run `pgolf audit {run.path}`)")
    return audit


def load_run(run_dir: str | Path) -> SeedRun:
    """Parse one run directory; missing or malformed required files raise one-line errors naming the file."""
    run = Run(run_dir).require_dir()
    results = run.results(required=True)
    cfg = load_config(run.path)
    seed = SeedRun(run=run, cfg=cfg, results=results, summary=run.train_summary(), timings=run.timings(),
                   quant=run.quant_summary(), env=run.env() or {}, audit=_checked_audit(run))
    seed.metrics, bad = run.metrics()
    if bad:
        seed.warnings.append(f"{run.file(METRICS)}: skipped {bad} unreadable line(s)")
    if not seed.metrics:
        seed.warnings.append(f"{run.file(METRICS)}: no training metrics (curves omitted for seed {seed.seed})")
    return seed


def load_runs(run_dirs) -> list[SeedRun]:
    """The seeds of one report, sorted by seed; a folder of run directories (`pgolf run --seeds ... --out
    DIR`) expands, and a directory given twice is an error."""
    if not run_dirs:
        raise ConfigError("no run directories given")
    paths = []
    for p in map(Path, run_dirs):
        found = find_runs(p) if p.is_dir() else []
        paths += found if found and found != [p] else [p]
    seen: dict[Path, Path] = {}
    for p in paths:
        rp = p.resolve()
        if rp in seen:
            raise ConfigError(f"{p}: given twice")
        seen[rp] = p
    return sorted((load_run(p) for p in paths), key=lambda r: r.seed)


def audit_status(audit: dict | None) -> dict:
    """audit.json (the report `pgolf audit` writes: {"status": PASS|FAIL, "checks": [{name, status, ...}]})
    -> {status: PASS|FAIL|not audited, passed, failed, skipped, checks}."""
    if audit is None:
        return {"status": NOT_AUDITED, "passed": None, "failed": [], "skipped": [], "checks": 0}
    checks = audit["checks"]
    return {"status": audit["status"], "passed": audit["status"] == "PASS",
            "failed": [c["name"] for c in checks if c["status"] == "FAIL"],
            "skipped": [c["name"] for c in checks if c["status"] == "SKIP"], "checks": len(checks)}


def _eval_seconds(run: SeedRun) -> float | None:
    for r in run.modes.values():
        if isinstance(r.get("eval_seconds_total"), int | float):
            return float(r["eval_seconds_total"])
    secs = [r["seconds"] for r in run.modes.values() if isinstance(r.get("seconds"), int | float)]
    if secs:
        return float(sum(secs))
    return run.timings.get("score")


def run_facts(run: SeedRun) -> dict:
    """The per-seed row of every table (and of report.json's `runs`)."""
    r, s = run.results, run.summary
    steps = int(r.steps)
    train_s = float(r.train_seconds)
    step_ms = s.step_avg_ms if s is not None else None
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
    if not r.within_limit:
        notes.append("OVER the byte limit")
    if any(v["partial"] for v in modes.values()):
        notes.append(PARTIAL_NOTE)
    budget = run.cfg.budget
    return {
        "run_dir": str(run.path), "seed": run.seed, "preset": r.preset,
        "config_hash": r.config_hash, "steps": steps, "step_avg_ms": float(step_ms),
        "train_seconds": train_s, "charged_train_seconds": float(s.charged_seconds if s is not None else train_s),
        "eval_seconds": _eval_seconds(run), "stopped_by": r.stopped_by,
        "model_bytes": r.artifact_bytes, "code_bytes": r.code_bytes,
        "total_bytes": int(r.total_bytes), "within_limit": bool(r.within_limit),
        "limit_bytes": int(run.quant.limit_bytes if run.quant is not None else budget.artifact_bytes_limit),
        "compressor": r.compressor, "results_compliant": bool(r.compliant),
        "modes": modes, "audit": audit, "compliance": "; ".join(notes),
        "hardware": describe_hardware(run.env), "on_target_hardware": hardware_matches(budget.target_hardware, run.env),
        "pytorch_version": run.env.get("torch"), "cuda_version": run.env.get("cuda"),
        "git_sha": run.env.get("git_sha"),
    }


def _cfg_key(cfg: RunConfig) -> dict:
    flat = flatten(cfg)
    for k in ("seed", "run_id"):
        flat.pop(k, None)
    return flat


def consistency_warnings(runs: list[SeedRun]) -> list[str]:
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
