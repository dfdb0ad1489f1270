"""How long each scoring mode would take at the record shape on 8xH100, estimated (not measured).

Method: count the token positions each mode pushes through the model at the record shape on the record's
validation set (forward passes, and backward passes split into "activations only" for adapter training
and "with weight gradients" for TTT and global phases), with pgolf's own window rules (windows padded to
their full length, LoRA chunks padded to their context), and convert with a measured throughput: the
record preset trained at 1,050,734 tokens/s on one H100 SXM (torch 2.11, SDPA, dev/LOG.md 2026-11-26).
A training step is one forward and a backward with weight gradients (about 2 forwards), so one forward
token costs 1/3 of a training token, an activations-only backward about 1/3 as well, and a backward with
weight gradients 2/3. Attention makes long windows cost more per token; the training measurement was at
the record's 2,048-token sequences, the length every mode here uses, so no correction is applied. The
validation set is the challenge's: 62,021,632 targets in 50,000 documents; their lengths are not known
here, so every document is taken to have the mean length (1,240 tokens), which undercounts the windows of
long documents in the `doc` mode and the padding of short ones in `lora`. SLOT's L-BFGS work (logit space,
no model forward) is taken from the measured CPU ratio of the mode to `sliding` when one is given.
"""

from __future__ import annotations

import math

from pgolf.config import RunConfig
from pgolf.scoring.modes import MODES

H100_TRAIN_TOKENS_PER_S = 1_050_734
RECORD_GPUS = 8
RECORD_VAL_TARGETS = 62_021_632
RECORD_VAL_DOCS = 50_000


def _sliding_windows(n_targets: int, T: int, S: int) -> int:
    return 1 if n_targets <= T else -(-(n_targets - (T - S)) // S)


def mode_work(mode: str, cfg: RunConfig, n_targets: int = RECORD_VAL_TARGETS, n_docs: int = RECORD_VAL_DOCS) -> dict:
    """{forward, backward_acts, backward_weights}: token positions the mode runs at cfg's score settings."""
    sc, m = cfg.score, MODES[mode]
    T, S = sc.seq_len, sc.sliding.stride
    doc_len = n_targets / n_docs
    work = {"forward": 0.0, "backward_acts": 0.0, "backward_weights": 0.0}
    if m.family == "window" and not m.overlapping:
        work["forward"] = math.ceil(n_targets / T) * T
    elif m.family == "window" and m.per_document:
        work["forward"] = n_docs * _sliding_windows(round(doc_len), T, S) * T
    elif m.family == "lora":
        lc = sc.lora
        ctx = lc.context or T
        chunks = n_docs * math.ceil(doc_len / lc.chunk_tokens)
        updates = chunks - n_docs  # a document's last chunk is not trained on
        work["forward"] = chunks * ctx + (lc.steps - 1) * updates * ctx
        work["backward_acts"] = lc.steps * updates * ctx
        if lc.phase_docs:
            trained = sum(min(k, n_docs) for k in lc.phase_docs) * doc_len  # each phase re-trains its prefix
            work["forward"] += lc.phase_epochs * trained
            work["backward_weights"] += lc.phase_epochs * trained
    else:  # sliding windows (sliding, slot), plus TTT's training over every chunk but the last
        work["forward"] = _sliding_windows(n_targets, T, S) * T
        if m.ttt:
            t = sc.ttt
            trained = t.epochs * (n_targets - min(t.chunk_tokens, n_targets))
            work["forward"] += trained
            work["backward_weights"] += trained
    return work


def record_seconds(work: dict) -> float:
    """Seconds on RECORD_GPUS H100s for `work`, from the measured training throughput (module docstring)."""
    train_equiv = (work["forward"] + work["backward_acts"] + 2 * work["backward_weights"]) / 3
    return train_equiv / (H100_TRAIN_TOKENS_PER_S * RECORD_GPUS)


def record_estimates(cfg: RunConfig, modes, cpu_seconds: dict[str, float] | None = None) -> dict[str, dict]:
    """{mode: {work, seconds, budget_share}} at cfg's score settings on the record's validation set. For
    SLOT modes the measured CPU ratio to sliding (cpu_seconds) scales the sliding estimate's forward part."""
    out = {}
    limit = cfg.budget.eval_seconds_limit
    base = record_seconds(mode_work("sliding", cfg))
    for mode in modes:
        work = mode_work(mode, cfg)
        secs = record_seconds(work)
        note = "FLOP count"
        if MODES[mode].slot and cpu_seconds and cpu_seconds.get("sliding") and cpu_seconds.get(mode):
            secs = secs - base + base * cpu_seconds[mode] / cpu_seconds["sliding"]
            note = "FLOP count; L-BFGS part scaled by the measured CPU ratio to sliding"
        out[mode] = {"work": work, "seconds": secs, "budget_seconds": limit, "within_budget": secs <= limit,
                     "method": note}
    return out
