"""The comparison group of the record test: `--baseline FILE|DIR|VALUES` -> per-seed val_loss (nats).

A record's submission.json (docs/DESIGN.md#submission-json), run directories (or a folder of them), or
comma-separated per-seed values; see docs/DESIGN.md#record-test for which numbers are used.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from pgolf.config import ConfigError
from pgolf.rundir import read_json
from pgolf.tools.report.fmt import clean, finite
from pgolf.tools.report.runs import find_runs, load_run
from pgolf.tools.report.stats import mean_std


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
        return {k: clean(v) for k, v in self.__dict__.items()}


_NUMBERS = re.compile(r"^[\s\d.,eE+-]+$")


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
    d = read_json(path, "baseline submission")
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: not a submission.json (expected a JSON object)")
    sr = d.get("seed_results")
    rows = list(sr.values()) if isinstance(sr, dict) else (sr if isinstance(sr, list) else [])
    rows = [x for x in rows if isinstance(x, dict)]
    label = d.get("name") or path.parent.name
    src = f"{path} ({label})" if label else str(path)
    partial = bool(d.get("partial"))
    bpb = d.get("val_bpb") if finite(d.get("val_bpb")) else None
    losses = [x.get("val_loss") for x in rows]
    if len(rows) >= 2 and all(finite(v) for v in losses):
        m, s = mean_std(losses)
        return Baseline(src, "submission", m, s, len(losses), values=[float(v) for v in losses], val_bpb_mean=bpb,
                        partial=partial, notes=["per-seed val_loss from seed_results"])
    bpbs = [x.get("val_bpb") for x in rows]
    if len(rows) >= 2 and all(finite(v) for v in bpbs) and finite(d.get("val_loss")) and bpb:
        ratio = d["val_loss"] / bpb
        vals = [float(v) * ratio for v in bpbs]
        m, s = mean_std(vals)
        return Baseline(src, "submission", m, s, len(vals), values=vals, val_bpb_mean=bpb, partial=partial,
                        notes=[f"per-seed val_bpb converted to nats with the record's val_loss/val_bpb = {ratio:.7f}"])
    seeds = d.get("seeds")
    n = len(seeds) if isinstance(seeds, list) else (seeds if isinstance(seeds, int) else 0)
    if finite(d.get("val_loss")) and finite(d.get("val_loss_std")) and n >= 2:
        return Baseline(src, "submission", float(d["val_loss"]), float(d["val_loss_std"]), n, val_bpb_mean=bpb,
                        partial=partial, notes=["summary statistics (val_loss, val_loss_std, seeds)"])
    raise ConfigError(f"{path}: no per-seed val_loss in seed_results and no val_loss + val_loss_std + seeds: "
                      "cannot run a Welch test")


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
            found = find_runs(p)
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
