"""Learning-rate and Muon-momentum schedules (docs/DESIGN.md#train-schedule). Pure functions of the loop state.

There is no LR warmup (the 20 "warmup" steps are a compile warm-up whose effects are undone); the LR
multiplier is 1 until a linear warmdown that reaches 0 exactly at the wallclock cap, and Muon's
momentum ramps 0.92 -> 0.99 over the first 1500 steps.
"""

from __future__ import annotations


def lr_multiplier(step: int, elapsed_seconds: float, cap_seconds: float, warmdown_iters: int,
                  iterations: int, warmdown_frac: float = 0.0) -> float:
    """Multiplier applied to every group's base LR before optimizer step `step` (0-based).

    With a wallclock cap (cap_seconds > 0), docs/DESIGN.md#train-schedule: the warmdown length in seconds is
    warmdown_iters times the mean step time measured so far (elapsed / step), and the multiplier is
    remaining / warmdown_s once the time remaining before the cap is inside that window, else 1.
    If the window is longer than the whole cap, the multiplier is below 1 from step 1 on (as in the
    record's code).

    Without a cap (cap_seconds == 0): linear warmdown over the last warmdown_iters of `iterations`,
    max((iterations - step) / warmdown_iters, 0) once step >= iterations - warmdown_iters.

    warmdown_frac > 0 replaces warmdown_iters by a share of the budget that does not depend on how fast
    the machine is: the last warmdown_frac of the cap's seconds (of `iterations` without a cap).

    Step 0 always returns 1.0 (no step time has been measured yet).
    """
    if warmdown_frac > 0:
        if cap_seconds <= 0:
            warmdown_iters = max(1, round(warmdown_frac * iterations))
    if step <= 0 or warmdown_iters <= 0 and warmdown_frac <= 0:
        return 1.0
    if cap_seconds > 0:
        remaining = max(cap_seconds - elapsed_seconds, 0.0)
        if remaining <= 0:
            return 0.0
        warmdown_s = warmdown_frac * cap_seconds if warmdown_frac > 0 else warmdown_iters * (elapsed_seconds / step)
        return remaining / warmdown_s if remaining <= warmdown_s else 1.0
    if step >= iterations - warmdown_iters:
        return max((iterations - step) / warmdown_iters, 0.0)
    return 1.0


def muon_momentum(step: int, start: float, end: float, warmup_steps: int) -> float:
    """Linear ramp start -> end over warmup_steps, then constant end (docs/DESIGN.md#train-optimizers: 0.92 -> 0.99, 1500)."""
    if warmup_steps <= 0:
        return end
    frac = min(max(step, 0) / warmup_steps, 1.0)
    return (1.0 - frac) * start + frac * end
