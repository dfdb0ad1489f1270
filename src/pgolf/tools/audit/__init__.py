"""Compliance auditor (tooling, never imported by runtime modules): `audit(run_dir)` and the `pgolf audit` verb.

registry.py   CHECKS (name -> check, in order) and audit()
context.py    AuditContext: the run read through pgolf.rundir, the device, the validation data, and what
              several checks share (model, LUTs, probes), computed once on first use
checks_scoring.py   causality, ledger, normalization, coverage
checks_run.py       budgets, data, reference
causality.py  the perturbation and self-prediction probes
report.py     format_table and the CLI verb
"""

from pgolf.tools.audit.registry import CHECKS, audit
from pgolf.tools.audit.report import add_audit_parser, cmd_audit, format_table

__all__ = ["CHECKS", "add_audit_parser", "audit", "cmd_audit", "format_table"]
