"""Numbers as the report prints and stores them: fixed-width cells, p-values, JSON-safe values."""

from __future__ import annotations

import math


def finite(x) -> bool:
    """A real (non-bool) finite number."""
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def clean(v):
    """JSON-safe: nan/inf -> None, recursively."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [clean(x) for x in v]
    return v


def fmt_num(x, nd: int = 6) -> str:
    """x with nd decimals, '-' for a missing or non-finite value."""
    return f"{x:.{nd}f}" if isinstance(x, int | float) and math.isfinite(x) else "-"


def fmt_int(x) -> str:
    """x rounded, with thousands separators; '-' for a missing or non-finite value."""
    return f"{x:,.0f}" if isinstance(x, int | float) and math.isfinite(x) else "-"


def fmt_p(p) -> str:
    if not isinstance(p, int | float) or not math.isfinite(p):
        return "-"
    return f"{p:.2e}" if p < 1e-4 else f"{p:.4f}"


def round_or_none(x, nd: int = 8):
    return round(x, nd) if isinstance(x, int | float) and math.isfinite(x) else None


def partial_what(note) -> str:
    """'first 8192 validation tokens only: not a challenge score' -> 'first 8192 validation tokens only'."""
    return str(note).split(":")[0].strip()
