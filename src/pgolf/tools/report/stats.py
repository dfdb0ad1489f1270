"""The record test (docs/DESIGN.md#record-test): Welch's t-test, mean and sample std, the significance verdict.

A record must lower the mean val_loss (nats/token) by at least MARGIN_NATS at p < ALPHA: Welch's one-sided
two-sample t-test of H0: mean_ours - mean_base >= -0.005 against H1: mean_ours - mean_base < -0.005, with the
Welch-Satterthwaite degrees of freedom (`welch_t`).
"""

from __future__ import annotations

import math
import statistics
from typing import Protocol

from pgolf.config import ConfigError

MARGIN_NATS = 0.005
"""The record bar: the mean val_loss must improve by at least this many nats/token (docs/DESIGN.md#record-test)."""
ALPHA = 0.01
"""The record bar's significance level."""
PROGRESSION_ALPHA = 0.25
"""The maintainers' later leaderboard cutoff (one-sided, no margin; docs/DESIGN.md#record-test, PR #1902)."""


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


class Sample(Protocol):
    """What the test needs of the comparison group (a `baseline.Baseline`)."""

    mean: float
    std: float
    n: int
    partial: bool


def significance(ours: list[float], base: Sample, ratio: float | None = None) -> dict:
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
