"""`pgolf audit RUN_DIR [--json]`: the verb, and the table it prints (docs/DESIGN.md#audit).

The report goes to RUN_DIR/audit.json, the table (or the JSON with --json) to stdout, progress to
stderr; the exit status is 1 when any check FAILs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pgolf.rundir import AUDIT
from pgolf.tools.audit.context import AUTO_MIN_TOKENS, FAIL
from pgolf.tools.audit.registry import CHECKS, DEVICES, audit


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
    lines.append(f"audit: {report['status']}" + (f" ({n_fail} check(s) failed; details in {AUDIT})" if n_fail
                                                 else f" (details in {Path(report['run_dir']) / AUDIT})"))
    return "\n".join(lines)


def cmd_audit(args) -> int:
    quiet = bool(args.json)

    def log(msg: str) -> None:
        if not quiet:
            print(msg, file=sys.stderr, flush=True)

    checks = tuple(c.strip() for c in args.checks.split(",") if c.strip()) if args.checks else tuple(CHECKS)
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
    p.add_argument("--device", default="cpu", choices=list(DEVICES),
                   help="where the probes run: cpu compares bitwise (default); cuda within 1e-5 nats")
    p.add_argument("--checks", default=None, metavar="LIST", help=f"comma-separated subset of {', '.join(CHECKS)}")
    p.set_defaults(fn=cmd_audit)
    return p
