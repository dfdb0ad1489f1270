"""The score section of the config tree: scoring modes and the settings of each method."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from pgolf.config.base import _check_fields, _require


@dataclass(frozen=True, kw_only=True)
class SlidingConfig:
    stride: int = 64
    """Score only the last `stride` targets of each window after the first."""
    batch_windows: int = 32

    def __post_init__(self) -> None:
        _check_fields(self, "score.sliding.")
        _require(self.stride >= 1, "score.sliding.stride", "must be >= 1")
        _require(self.batch_windows >= 1, "score.sliding.batch_windows", "must be >= 1")


@dataclass(frozen=True, kw_only=True)
class SlotConfig:
    """Causal SLOT: a per-window bias fitted on already-scored positions (docs/DESIGN.md#eval-slot).

    The defaults below are the one place the default SLOT is set; `SLOT_SETTINGS` names other settings."""

    phase_iters: tuple[int, ...] = (5, 18)
    """L-BFGS iteration cap of each phase (the V20 cascade: 5 then 18)."""
    phase_history: tuple[int, ...] = (10, 20)
    """L-BFGS history size of each phase (fresh memory per phase)."""
    phase_alpha: tuple[float, ...] = (0.0, 0.0)
    """Per phase: 0 = uniform loss; a > 0 mixes importance weights (1 - p_target) with uniform by a."""
    focal: int = 256
    """Optimize only the last `focal` already-scored positions before the scored region (0 = all)."""
    clamp: float = 5.0
    """The delta is clamped to [-clamp, clamp] elementwise after every phase (the seed's 5: with the L2
    penalty it is a hard bound the fit rarely reaches)."""
    l2: float = 0.03
    """L2 penalty: the objective is the window's (weighted) mean NLL + l2 / 2 * |delta|^2, i.e. a penalty
    of l2 * n / 2 * |delta|^2 on the NLL summed over its n fitted positions (scaled with n, so its
    strength per position does not depend on focal). 0 = off (bitwise the unpenalized fit). 0.03 with focal
    256: the best of a sweep on the cpu model (docs/DESIGN.md#eval-slot); 0.01 is already worse than sliding."""
    guard: Literal["off", "check", "never_keep"] = "off"
    """check: fit on the earlier adaptation positions, keep the delta (or a shrunk copy) only if it lowers
    the mean NLL on the later guard_frac of them, else score the window with delta 0 (= sliding).
    never_keep: the same work, then delta 0 for every window (a test hook; scores exactly as sliding).
    Off by default: on the penalized default fit the check costs more than it saves (measured); it is the
    safety switch for unpenalized or untried settings (the `guarded` setting, `seed_guarded`)."""
    guard_frac: float = 0.5
    """Share of each window's adaptation positions (the latest ones) held out for the check: the last
    max(1, floor(guard_frac * n)) of n, at most n - 1; a window with n < 2 keeps no delta."""
    guard_shrink: tuple[float, ...] = (1.0, 0.5, 0.25)
    """Candidates s * delta tried on the check positions; the best one is kept if it beats delta 0."""
    guard_margin: float = 0.0
    """A candidate must beat delta 0 on the check positions by more than this (nats per position)."""
    within_doc: bool = False
    """Fit a window's delta only on adaptation positions of the document of its first scored target, and
    score targets of a later document (the scored region crossed a BOS) with delta 0 (documents start at
    model.bos_id, read from the inputs). Off by default: on the cpu model it changed nothing measurable
    (first 32,768 dev tokens: default fit 1.34132 on vs 1.34098 off; dev/LOG.md)."""
    guard_z: float = 3.0
    """A keep also needs the check gain to stand this many standard errors clear: with d the per-position NLL
    change over the c check positions, mean(d) + guard_z * sd(d) / sqrt(c) < -guard_margin (0 = off)."""
    guard_refit: bool = False
    """After a keep: refit on all adaptation positions and score with s * (refit delta); False = score with
    the very delta the check validated (half the fitting work)."""
    lr: float = 1.0
    line_search: Literal["strong_wolfe", "armijo"] = "strong_wolfe"
    warm_start: bool = True
    space: Literal["logit", "hidden"] = "logit"
    coupling: Literal["per_window", "shared"] = "per_window"
    """shared = the withdrawn entry's batch-shared delta: a NON-COMPLIANT reference mode."""

    def __post_init__(self) -> None:
        p = "score.slot."
        _check_fields(self, p)
        n = len(self.phase_iters)
        _require(n >= 1, p + "phase_iters", "at least one phase is needed")
        _require(len(self.phase_history) == n and len(self.phase_alpha) == n, p + "phase_history",
                 "phase_iters, phase_history and phase_alpha must have the same length")
        _require(all(i >= 1 for i in self.phase_iters), p + "phase_iters", "iterations must be >= 1")
        _require(all(h >= 1 for h in self.phase_history), p + "phase_history", "history sizes must be >= 1")
        _require(all(0.0 <= a <= 1.0 for a in self.phase_alpha), p + "phase_alpha", "must be in [0, 1]")
        _require(self.focal >= 0, p + "focal", "must be >= 0")
        _require(self.clamp > 0, p + "clamp", "must be > 0")
        _require(self.l2 >= 0, p + "l2", "must be >= 0")
        _require(0 < self.guard_frac < 1, p + "guard_frac", f"must be in (0, 1), got {self.guard_frac}")
        _require(len(self.guard_shrink) >= 1 and all(0 < s <= 1 for s in self.guard_shrink), p + "guard_shrink",
                 f"one or more factors in (0, 1], got {list(self.guard_shrink)}")
        _require(self.guard_margin >= 0, p + "guard_margin", "must be >= 0")
        _require(self.guard_z >= 0, p + "guard_z", "must be >= 0")


SLOT_SETTINGS: dict[str, dict] = {
    "seed": {"clamp": 5.0, "l2": 0.0, "focal": 128, "guard": "off", "within_doc": False},
    "seed_guarded": {"clamp": 5.0, "l2": 0.0, "focal": 128, "guard": "check", "within_doc": False},
    "guarded": {"guard": "check"},
}
"""Named SLOT settings, as score.slot changes on top of a SlotConfig (`slot_setting`); `slot_setting_sets`
gives the same as --set lines. seed = the seed's fit: clamp 5, no penalty, focal 128, no guard;
seed_guarded = the same behind the guard (guard_frac 0.5, guard_z 2); guarded = the default fit behind the
guard."""


def slot_setting(name: str, base: SlotConfig | None = None) -> SlotConfig:
    """`base` (default SlotConfig()) with the named setting's changes."""
    _require(name in SLOT_SETTINGS, "score.slot", f"unknown SLOT setting {name!r}; choose from {list(SLOT_SETTINGS)}")
    return replace(base or SlotConfig(), **SLOT_SETTINGS[name])


def slot_setting_sets(name: str) -> list[str]:
    """The named setting as `--set` values, e.g. ["score.slot.clamp=5.0", "score.slot.l2=0.0", ...]."""
    _require(name in SLOT_SETTINGS, "score.slot", f"unknown SLOT setting {name!r}; choose from {list(SLOT_SETTINGS)}")
    return [f"score.slot.{k}={v}" for k, v in SLOT_SETTINGS[name].items()]


@dataclass(frozen=True, kw_only=True)
class TTTConfig:
    """Test-time training (docs/DESIGN.md#eval-ttt)."""

    mode: Literal["score_first", "prequant"] = "score_first"
    """prequant = the withdrawn entry's training on all validation tokens first: NON-COMPLIANT."""
    chunk_tokens: int = 32_768
    epochs: int = 3
    lr: float = 0.002
    optimizer: Literal["sgd", "adamw"] = "sgd"
    momentum: float = 0.9
    grad_clip: float = 1.0
    first_block_lr_mult: float = 0.3
    """Discriminative LRs: block 0 gets this multiple of lr, rising linearly to 1.0 at the last block."""
    batch_seqs: int = 32
    freeze_blocks: int = 0

    def __post_init__(self) -> None:
        p = "score.ttt."
        _check_fields(self, p)
        _require(self.chunk_tokens >= 1, p + "chunk_tokens", "must be >= 1")
        _require(self.epochs >= 0, p + "epochs", "must be >= 0")
        _require(self.lr >= 0, p + "lr", "must be >= 0")
        _require(0 <= self.momentum < 1, p + "momentum", "must be in [0, 1)")
        _require(self.grad_clip >= 0, p + "grad_clip", "must be >= 0")
        _require(0 < self.first_block_lr_mult <= 1, p + "first_block_lr_mult", "must be in (0, 1]")
        _require(self.batch_seqs >= 1, p + "batch_seqs", "must be >= 1")
        _require(self.freeze_blocks >= 0, p + "freeze_blocks", "must be >= 0")

LORA_TARGETS = ("q", "k", "v", "o", "mlp", "head")


@dataclass(frozen=True, kw_only=True)
class LoraConfig:
    """Per-document score-first LoRA test-time training, mode `lora` (docs/DESIGN.md#doc-lora-ttt)."""

    rank: int = 8
    scale: float = 1.0
    """Adapters add scale * (x A^T) B^T (alpha / rank in LoRA's terms)."""
    targets: tuple[str, ...] = LORA_TARGETS
    """Which projections get an adapter: q, k, v, o, mlp (every layer) and head."""
    chunk_tokens: int = 128
    """Each document's targets are scored and then trained on in chunks of this many (128 with lr 0.01: the
    best of a sweep on the cpu model at <= 3x sliding's time; 64 gains more at ~4x, dev/LOG.md 2026-12-04)."""
    context: int = 0
    """Window of the chunk [a, a + C): the document's inputs from max(document start, a + C - context) up to
    the chunk's end (0 = score.seq_len); it never depends on where the document ends."""
    docs_per_batch: int = 16
    """Documents adapted side by side (each with its own adapters)."""
    lr: float = 0.01
    beta1: float = 0.0
    beta2: float = 0.999
    eps: float = 1e-10
    weight_decay: float = 0.0
    steps: int = 1
    """Optimizer steps per chunk (after the first, each re-runs the chunk's window)."""
    seed: int = 0
    """Adapter A of document d is drawn from a generator seeded by (seed, d): independent of its batch."""
    order: Literal["score_first", "update_first"] = "score_first"
    """update_first = train on a chunk, then score it: a NON-COMPLIANT reference mode."""
    phase_docs: tuple[int, ...] = ()
    """Phased global TTT: once the first K documents of the stream (cumulative counts, stream order) are all
    scored, all base weights are trained on exactly those documents, then scoring goes on; empty = off."""
    phase_lr: float = 0.001
    phase_momentum: float = 0.9
    phase_epochs: int = 1
    phase_batch_seqs: int = 16
    phase_grad_clip: float = 1.0

    def __post_init__(self) -> None:
        p = "score.lora."
        _check_fields(self, p)
        _require(self.rank >= 1, p + "rank", "must be >= 1")
        _require(self.scale > 0, p + "scale", "must be > 0")
        bad = [t for t in self.targets if t not in LORA_TARGETS]
        _require(not bad and len(set(self.targets)) == len(self.targets), p + "targets",
                 f"each of {', '.join(LORA_TARGETS)} at most once, got {list(self.targets)}")
        _require(self.chunk_tokens >= 1, p + "chunk_tokens", "must be >= 1")
        _require(self.context >= 0, p + "context", "must be >= 0 (0 = score.seq_len)")
        _require(self.docs_per_batch >= 1, p + "docs_per_batch", "must be >= 1")
        _require(self.lr >= 0 and self.phase_lr >= 0, p + "lr", "learning rates must be >= 0")
        _require(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, p + "beta1", "betas must be in [0, 1)")
        _require(self.eps > 0, p + "eps", "must be > 0")
        _require(self.weight_decay >= 0, p + "weight_decay", "must be >= 0")
        _require(self.steps >= 1, p + "steps", "must be >= 1")
        _require(self.seed >= 0, p + "seed", "must be >= 0")
        _require(all(k >= 1 for k in self.phase_docs) and list(self.phase_docs) == sorted(set(self.phase_docs)),
                 p + "phase_docs", f"cumulative document counts, increasing and >= 1, got {list(self.phase_docs)}")
        _require(0 <= self.phase_momentum < 1, p + "phase_momentum", "must be in [0, 1)")
        _require(self.phase_epochs >= 1 and self.phase_batch_seqs >= 1, p + "phase_epochs", "must be >= 1")
        _require(self.phase_grad_clip >= 0, p + "phase_grad_clip", "must be >= 0")


SCORE_MODES = ("plain", "sliding", "slot", "ttt", "ttt+slot", "doc", "lora")


@dataclass(frozen=True, kw_only=True)
class ScoreConfig:
    """Evaluation of the artifact on the validation stream (docs/DESIGN.md#evaluation)."""

    modes: tuple[str, ...] = ("sliding",)
    """Evaluation modes, any of SCORE_MODES (plain, sliding, slot, ttt, ttt+slot, doc, lora)."""
    seq_len: int = 2048
    """Window length T for every mode."""
    max_val_tokens: int = 0
    """Score only the first N validation tokens (0 = all). Quick checks only: a partial score is labelled
    as such and is never a challenge result."""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """Scoring precision, decided on the machine that scores: auto = bf16 autocast on CUDA; on CPU bf16 only
    where bf16 matmuls measure faster than fp32 (runtime.choose_precision), else fp32."""
    sliding: SlidingConfig = field(default_factory=SlidingConfig)
    slot: SlotConfig = field(default_factory=SlotConfig)
    ttt: TTTConfig = field(default_factory=TTTConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)

    def __post_init__(self) -> None:
        _check_fields(self, "score.")
        bad = [m for m in self.modes if m not in SCORE_MODES]
        _require(not bad, "score.modes", f"unknown mode(s) {bad}; choose from {list(SCORE_MODES)}")
        _require(self.seq_len >= 2, "score.seq_len", "must be >= 2")
        _require(self.max_val_tokens >= 0, "score.max_val_tokens", "must be >= 0 (0 = the whole stream)")
        _require(self.sliding.stride <= self.seq_len, "score.sliding.stride",
                 f"{self.sliding.stride} exceeds score.seq_len={self.seq_len}")
        if "lora" in self.modes:
            self.check_lora_window()

    def check_lora_window(self) -> None:
        """A lora chunk's targets must fit in one window (checked for the configured modes and by the scorer)."""
        ctx = self.lora.context or self.seq_len
        _require(self.lora.chunk_tokens <= ctx, "score.lora.chunk_tokens",
                 f"{self.lora.chunk_tokens} exceeds the chunk window score.lora.context={ctx} (0 = score.seq_len): "
                 "a chunk's targets must fit in one window")
