"""`pgolf report RUN_DIR...`: aggregate the seeds of a record attempt, test it against a baseline, write the files.

Tooling package (never imported by runtime code). Reads the run directories written by
`pgolf.pipeline.run_record` through `pgolf.rundir.Run` (docs/DESIGN.md#run-directory) and writes to --out:

- `submission.json`: the fields of docs/DESIGN.md#submission-json, with the compliance booleans;
- `README.md`: the results tables, the statistics paragraph and links to the plots;
- `report.json`: everything above, machine-readable;
- PNG plots (`PLOT_FILES`): training loss over steps and time, validation BPB over steps and time, BPB per
  evaluation mode, submission bytes against the cap.

One job per module: `runs` (the seeds' run directories and per-seed facts), `stats` (Welch's test, the
record test of docs/DESIGN.md#record-test), `baseline` (--baseline), `aggregate` (the report dict and the
compliance booleans), `tables` (text and markdown tables, README.md, submission.json), `plots`, `fmt`
(number formatting); this module holds the entry points and the CLI verb.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from pgolf.tools.report.aggregate import aggregate, compliance, primary_mode
from pgolf.tools.report.baseline import Baseline, baseline_from_submission, load_baseline, parse_values
from pgolf.tools.report.fmt import clean
from pgolf.tools.report.plots import PLOT_DPI, PLOT_FILES, PLOT_SIZE, png_size, write_plots
from pgolf.tools.report.runs import (
    NOT_AUDITED,
    PARTIAL_NOTE,
    SeedRun,
    audit_status,
    consistency_warnings,
    load_run,
    load_runs,
    run_facts,
)
from pgolf.tools.report.stats import (
    ALPHA,
    MARGIN_NATS,
    PROGRESSION_ALPHA,
    mean_std,
    significance,
    welch_from_stats,
    welch_t,
)
from pgolf.tools.report.tables import REPORT_FILES, format_text, md_table, readme, submission, tables, text_table

__all__ = [
    "ALPHA", "MARGIN_NATS", "NOT_AUDITED", "PARTIAL_NOTE", "PLOT_DPI", "PLOT_FILES", "PLOT_SIZE", "PROGRESSION_ALPHA",
    "REPORT_FILES", "Baseline", "SeedRun", "add_report_parser", "aggregate", "audit_status",
    "baseline_from_submission", "build_report", "cmd_report", "compliance", "consistency_warnings", "default_out",
    "format_text", "load_baseline", "load_run", "load_runs", "md_table", "mean_std", "parse_values", "png_size",
    "primary_mode", "readme", "report", "run_facts", "significance", "submission", "tables", "text_table",
    "welch_from_stats", "welch_t", "write_plots", "write_report",
]


def build_report(run_dirs, baseline: list[str] | None = None, mode: str | None = None,
                 baseline_mode: str | None = None) -> dict:
    """Parse the runs (and the baseline), aggregate and test: -> the report dict (report.json's content)."""
    return aggregate(load_runs(run_dirs), baseline, mode=mode, baseline_mode=baseline_mode)


def default_out(run_dirs) -> Path:
    """The common parent of the run directories, / report."""
    parents = [str(Path(p).resolve().parent) for p in run_dirs]
    return Path(os.path.commonpath(parents)) / "report"


def write_report(rep: dict, runs: list[SeedRun], out: str | Path, *, plots: bool = True, **sub_fields) -> dict:
    """Write submission.json, README.md, report.json (and the plots) of `rep`, aggregated from `runs`, into
    `out`; -> the submission dict."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rep["plots"] = write_plots(rep, runs, out) if plots else {}
    rep["out"] = str(out)
    sub = submission(rep, runs, **sub_fields)
    (out / "submission.json").write_text(json.dumps(sub, indent=2) + "\n", encoding="utf-8")
    (out / "README.md").write_text(readme(rep, sub, runs), encoding="utf-8")
    body = clean(rep | {"submission": sub})
    (out / "report.json").write_text(json.dumps(body, indent=2, default=str) + "\n", encoding="utf-8")
    return sub


def report(run_dirs, *, baseline: list[str] | None = None, out: str | Path | None = None, mode: str | None = None,
           baseline_mode: str | None = None, plots: bool = True, **sub_fields) -> dict:
    """Library entry of `pgolf report`: -> the report dict (with `submission`), files written to `out`."""
    runs = load_runs(run_dirs)
    rep = aggregate(runs, baseline, mode=mode, baseline_mode=baseline_mode)
    out = Path(out) if out else default_out([f["run_dir"] for f in rep["runs"]])
    rep["submission"] = write_report(rep, runs, out, plots=plots, **sub_fields)
    return rep


def cmd_report(args) -> int:
    rep = report(args.run_dirs, baseline=args.baseline, out=args.out, mode=args.mode,
                 baseline_mode=args.baseline_mode, plots=not args.no_plots, name=args.name, author=args.author,
                 github_id=args.github_id, blurb=args.blurb, track=args.track, baseline_pr=args.baseline_pr)
    if args.json:
        print(json.dumps(clean(rep), indent=2, default=str))
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
