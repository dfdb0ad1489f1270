"""The score section of the config tree: scoring modes and the settings of each method."""

from __future__ import annotations

from dataclasses import dataclass, field
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
    """Causal SLOT: a per-window logit bias fitted on already-scored positions (docs/DESIGN.md#eval-slot)."""

    phase_iters: tuple[int, ...] = (5, 18)
    """L-BFGS iteration cap of each phase (the V20 cascade: 5 then 18)."""
    phase_history: tuple[int, ...] = (10, 20)
    """L-BFGS history size of each phase (fresh memory per phase)."""
    phase_alpha: tuple[float, ...] = (0.0, 0.0)
    """Per phase: 0 = uniform loss; a > 0 mixes importance weights (1 - p_target) with uniform by a."""
    focal: int = 128
    """Optimize only the last `focal` already-scored positions before the scored region (0 = all)."""
    clamp: float = 5.0
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
    chunk_tokens: int = 64
    """Each document's targets are scored and then trained on in chunks of this many."""
    context: int = 0
    """Window of a chunk: the last `context` inputs of the document up to the chunk's end (0 = score.seq_len)."""
    docs_per_batch: int = 16
    """Documents adapted side by side (each with its own adapters)."""
    lr: float = 0.003
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
    """Phased global TTT: after the first K documents of the scoring queue (cumulative counts, rounded up to
    whole batches) are scored, all base weights are trained on exactly those documents; empty = off."""
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
