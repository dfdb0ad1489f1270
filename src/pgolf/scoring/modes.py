"""The table of scoring modes: what each mode is, how its windows are planned, how it is labelled.

Every consumer (the evaluator, the auditor, the bundle's submission label, the report) reads `MODES`
instead of matching mode names. The names themselves are `pgolf.config.SCORE_MODES` (the config
validates `score.modes` against them; a check below keeps the two equal).

| mode     | family | plan                          | adapts with                   | legal because (docs/DESIGN.md) |
|----------|--------|-------------------------------|-------------------------------|--------------------------------|
| plain    | window | non-overlapping windows       | nothing                       | #eval-plain                    |
| sliding  | window | stride score.sliding.stride   | nothing                       | #eval-sliding                  |
| slot     | slot   | sliding                       | a per-window causal bias      | #eval-slot                     |
| ttt      | ttt    | sliding                       | score-first TTT               | #eval-ttt                      |
| ttt+slot | ttt    | sliding                       | both                          | #eval-ttt                      |
| doc      | window | sliding inside each document  | nothing                       | #doc-isolated-attention        |
| lora     | lora   | chunks of each document       | per-document score-first LoRA | #doc-lora-ttt                  |

Three settings turn a mode into a labelled NON-COMPLIANT reference (docs/DESIGN.md#noncompliant-modes):
score.slot.coupling=shared (the withdrawn entry's batch-shared SLOT delta), score.ttt.mode=prequant
(training on every validation token before scoring) and score.lora.order=update_first (each LoRA chunk
trained on before it is scored). `label_for` is the one place that derives a mode's label from them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pgolf.config import SCORE_MODES, RunConfig
from pgolf.scoring.docs import doc_plan
from pgolf.scoring.plan import ScorePlan, plain_plan, sliding_plan

COMPLIANT = "compliant"
SLOT_COMPLIANT = "compliant (per-window causal SLOT)"
TTT_COMPLIANT = "compliant (score-first TTT)"
LORA_COMPLIANT = "compliant (per-document score-first LoRA TTT)"
SHARED_SLOT = "batch-shared SLOT delta"
PREQUANT_TTT = "pre-quant TTT on validation tokens"
UPDATE_FIRST_LORA = "LoRA update before scoring each chunk"
AUDIT_FAILED = "TTT ledger audit failed"
REFERENCE_SETTINGS = (SHARED_SLOT, PREQUANT_TTT, UPDATE_FIRST_LORA)
"""The reference (leaking) settings, in the order a whole-run label lists them."""


def noncompliant(reason: str) -> str:
    return f"NON-COMPLIANT ({reason})"


@dataclass(frozen=True)
class Mode:
    name: str
    family: str
    """"window" (plain / sliding / doc: one frozen forward per window), "slot", "ttt" or "lora"."""
    slot: bool
    """Scores every window with causal SLOT (score.slot)."""
    ttt: bool
    """Adapts the weights by test-time training (score.ttt)."""
    overlapping: bool
    """Sliding windows (stride score.sliding.stride); False = non-overlapping windows of score.seq_len."""
    compliant_label: str
    per_document: bool = False
    """Windows never cross a document (the plan needs the stream itself, not only its length)."""

    def plan(self, stream: np.ndarray | int, cfg: RunConfig) -> ScorePlan:
        """The windows this mode scores: of the stream (an array), or of a stream of that many tokens."""
        T, S = cfg.score.seq_len, cfg.score.sliding.stride
        if self.per_document:
            if isinstance(stream, int):
                raise ValueError(f"mode {self.name} plans per document: it needs the stream, not its length")
            return doc_plan(stream, T, S, cfg.model.bos_id)
        n = stream if isinstance(stream, int) else len(stream)
        return sliding_plan(n, T, S) if self.overlapping else plain_plan(n, T)

    def reference_settings(self, *, ttt_mode: str, slot_coupling: str, lora_order: str = "score_first") -> list[str]:
        """The NON-COMPLIANT reference settings this mode would run with (empty = compliant)."""
        out = []
        if self.ttt and ttt_mode == "prequant":
            out.append(PREQUANT_TTT)
        if self.slot and slot_coupling == "shared":
            out.append(SHARED_SLOT)
        if self.family == "lora" and lora_order == "update_first":
            out.append(UPDATE_FIRST_LORA)
        return out

    def compliance(self, cfg: RunConfig) -> tuple[bool, str]:
        """(compliant, label) of this mode under cfg's score settings."""
        return label_for(self.name, ttt_mode=cfg.score.ttt.mode, slot_coupling=cfg.score.slot.coupling,
                         lora_order=cfg.score.lora.order)


MODES: dict[str, Mode] = {m.name: m for m in (
    Mode("plain", "window", slot=False, ttt=False, overlapping=False, compliant_label=COMPLIANT),
    Mode("sliding", "window", slot=False, ttt=False, overlapping=True, compliant_label=COMPLIANT),
    Mode("slot", "slot", slot=True, ttt=False, overlapping=True, compliant_label=SLOT_COMPLIANT),
    Mode("ttt", "ttt", slot=False, ttt=True, overlapping=True, compliant_label=TTT_COMPLIANT),
    Mode("ttt+slot", "ttt", slot=True, ttt=True, overlapping=True, compliant_label=TTT_COMPLIANT),
    Mode("doc", "window", slot=False, ttt=False, overlapping=True, compliant_label=COMPLIANT, per_document=True),
    Mode("lora", "lora", slot=False, ttt=False, overlapping=True, compliant_label=LORA_COMPLIANT,
         per_document=True),
)}
if tuple(MODES) != SCORE_MODES:  # the config's list of names and this table must agree
    raise AssertionError(f"scoring.modes.MODES {tuple(MODES)} != config.SCORE_MODES {SCORE_MODES}")


def label_for(mode: str, *, ttt_mode: str = "score_first", slot_coupling: str = "per_window",
              lora_order: str = "score_first") -> tuple[bool, str]:
    """(compliant, label) of `mode` with these reference switches: its compliant label, or every reference
    setting in effect as 'NON-COMPLIANT (...)', joined by '; '."""
    refs = MODES[mode].reference_settings(ttt_mode=ttt_mode, slot_coupling=slot_coupling, lora_order=lora_order)
    if not refs:
        return True, MODES[mode].compliant_label
    return False, "; ".join(noncompliant(r) for r in refs)


def config_compliance(cfg: RunConfig) -> str:
    """One label for a whole run's configured modes: "compliant", or NON-COMPLIANT naming every reference
    setting any of them uses (the record's submission.json)."""
    used: set[str] = set()
    for name in cfg.score.modes:
        used.update(MODES[name].reference_settings(ttt_mode=cfg.score.ttt.mode,
                                                   slot_coupling=cfg.score.slot.coupling,
                                                   lora_order=cfg.score.lora.order))
    problems = [r for r in REFERENCE_SETTINGS if r in used]
    return noncompliant("; ".join(problems)) if problems else COMPLIANT


def slot_modes() -> tuple[str, ...]:
    return tuple(n for n, m in MODES.items() if m.slot)


def ttt_modes() -> tuple[str, ...]:
    return tuple(n for n, m in MODES.items() if m.ttt)
