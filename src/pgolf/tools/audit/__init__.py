"""Compliance auditor (tooling, never imported by runtime modules): `audit(run_dir)` and the `pgolf audit` verb;
the causality probes live in `causality.py`."""

from pgolf.tools.audit.checks import CHECKS, add_audit_parser, audit, format_table

__all__ = ["CHECKS", "add_audit_parser", "audit", "format_table"]
