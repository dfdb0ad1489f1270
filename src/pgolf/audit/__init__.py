"""Compliance auditor (tooling, never imported by runtime modules): `checks.audit(run_dir)` and the
`pgolf audit` verb (`checks.add_audit_parser`); the causality probes live in `causality.py`."""
