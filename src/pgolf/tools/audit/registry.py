"""`audit(run_dir)`: prove a finished run is legal, or say exactly why it is not (docs/DESIGN.md#audit).

A run directory (from `pgolf run` / `pipeline.run_record`) holds config.json, results.json, the artifact
and the records of training and quantization; `AuditContext` reads them through `pgolf.rundir`. Each
check in `CHECKS` is a function of the context returning a CheckResult (PASS, FAIL or SKIP, an evidence
dict, a one-line message); the report goes to RUN_DIR/audit.json. Nothing is taken on trust when it can
be recomputed: scores are re-run through `evaluate()` on a validation prefix, sizes are read from disk,
the data from its shards.

1. causality       per mode the run reported: the perturbation and self-prediction probes of
                   `causality.py` on a validation prefix, with the run's own score settings; bitwise on
                   CPU (the default device), within causality.CUDA_TOLERANCE nats on CUDA. A prefix
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

import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

import pgolf
from pgolf.config import ConfigError
from pgolf.files import atomic_write_json
from pgolf.rundir import AUDIT
from pgolf.runtime import DistEnv
from pgolf.tools.audit.checks_run import check_budgets, check_data, check_reference
from pgolf.tools.audit.checks_scoring import check_causality, check_coverage, check_ledger, check_normalization
from pgolf.tools.audit.context import FAIL, PASS, AuditContext, CheckResult

CheckFn = Callable[[AuditContext], CheckResult]
CHECKS: dict[str, CheckFn] = {
    "causality": check_causality,
    "ledger": check_ledger,
    "normalization": check_normalization,
    "coverage": check_coverage,
    "budgets": check_budgets,
    "data": check_data,
    "reference": check_reference,
}
"""Every check, in the order `pgolf audit` runs them by default (iterating gives the names)."""
DEVICES = ("cpu", "cuda", "auto")


def audit(run_dir: str | Path, *, max_val_tokens: int | None = None, device: str = "cpu",
          checks: Iterable[str] = CHECKS, log: Callable[[str], None] | None = None, write: bool = True) -> dict:
    """Run the checks on a finished run; -> the report (also RUN_DIR/audit.json unless write=False).

    max_val_tokens: the probe prefix for every mode (default: per mode, max(AUTO_MIN_TOKENS, what the
    mode's probes need), capped by the scored stream). device: "cpu" (exact), "cuda" or "auto".
    checks: names from CHECKS, run and reported in the order given.
    """
    checks = tuple(checks)
    bad = [c for c in checks if c not in CHECKS]
    if bad or not checks:
        raise ConfigError(f"audit: unknown check(s) {bad}; choose from {', '.join(CHECKS)}")
    if max_val_tokens is not None and max_val_tokens and max_val_tokens < 2:
        raise ConfigError(f"--max-val-tokens must be >= 2, got {max_val_tokens}")
    if device not in DEVICES:
        raise ConfigError(f"--device must be cpu, cuda or auto, got {device!r}")
    t0 = time.perf_counter()
    dev = torch.device("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu")
    ctx = AuditContext.load(run_dir, DistEnv(device=dev), checks=checks, max_val_tokens=max_val_tokens, log=log)
    deterministic = torch.are_deterministic_algorithms_enabled()
    if dev.type == "cuda":  # atomics (scatter/index add) would add run-to-run noise to the comparisons
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        results = {name: CHECKS[name](ctx) for name in checks}
    finally:
        torch.use_deterministic_algorithms(deterministic)
    status = FAIL if any(r.status == FAIL for r in results.values()) else PASS
    report = {"run_dir": str(ctx.run.path), "status": status, "device": str(dev), "pgolf": pgolf.__version__,
              "max_val_tokens": max_val_tokens, "modes": ctx.modes,
              "probe_prefix_tokens": ctx.probe_prefix_tokens(),
              "seconds": time.perf_counter() - t0,
              "checks": [results[c].to_json() for c in checks]}
    report = json.loads(json.dumps(report, default=_json_default))  # numpy scalars and arrays -> JSON values
    if write:
        atomic_write_json(ctx.run.file(AUDIT), report)
    return report


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
