"""One typed, frozen configuration tree for a whole run.

`RunConfig` holds every knob of the pipeline in sections (model, data, train, optim, quant, score,
budget). It is built by a preset function (`pgolf.presets`), then overridden exactly once by
`resolve()` from three carriers, in this order of precedence (later wins):

1. the challenge's own environment names (`NUM_LAYERS=11`, `SEED=42`, ...; `LEGACY_ENV` below),
2. `PGOLF_SECTION__KEY=value` environment variables (double underscore = dot),
3. `--set section.key=value` on the command line.

Every value is coerced from the field's annotation; unknown keys and ill-typed values raise
`ConfigError` naming the key and where it came from. After `resolve()` the tree is the only source
of truth: it is printed, diffed against its preset and hashed (`config_hash`).

This module and `runtime.py` are the only places under `pgolf` that read `os.environ`.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal


class ConfigError(ValueError):
    """A user-facing configuration problem; the message names the dotted key."""


def _require(ok: bool, key: str, problem: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {problem}")


# --------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The GPT of STACK.md section 3. Every component can be switched off for ablations."""

    vocab_size: int = 1024
    """Model vocabulary (must cover the tokenizer's ids; shards are refused if a token is >= it)."""
    num_layers: int = 11
    model_dim: int = 512
    num_heads: int = 8
    num_kv_heads: int = 4
    """Grouped-query attention: each KV head serves num_heads / num_kv_heads query heads."""
    mlp_mult: float = 3.0
    """MLP hidden width = mlp_mult * model_dim."""
    mlp_activation: Literal["leaky_relu2", "relu2"] = "leaky_relu2"
    """leaky_relu2 = LeakyReLU(leaky_slope)^2 (PR #493/#549); relu2 = the naive baseline's ReLU^2."""
    leaky_slope: float = 0.5
    tie_embeddings: bool = True
    logit_softcap: float = 30.0
    """logits = c * tanh(logits / c); 0 disables."""
    rope_base: float = 10000.0
    rope_dims: int = 16
    """Rotary dims per head (partial RoPE); 0 means all head dims."""
    rope_ref_len: int = 1024
    """NTK rescale reference length: beyond it base' = base * (T/ref)^(d/(d-2)); 0 disables."""
    qk_norm: bool = True
    qk_gain_init: float = 5.0
    """Initial value of the learnable per-head query gain (1.5 in PR #1019, 5.0 in the V20 lineage)."""
    ln_scale: bool = True
    """Scale block inputs by 1/sqrt(layer + 1) after RMSNorm."""
    xsa_last_n: int = 11
    """Exclusive self-attention on the last n layers (0 = off)."""
    bigram_buckets: int = 3072
    """BigramHash table rows (the last row is reserved for position 0); 0 = off."""
    bigram_dim: int = 112
    smear_gate: bool = True
    ve_dim: int = 128
    ve_layers: tuple[int, ...] = (9, 10)
    """Layers that receive value embeddings; empty = off."""
    unet_skips: bool = True
    resid_mix: bool = True
    tied_embed_init_std: float = 0.005
    ortho_init: bool = True

    def __post_init__(self) -> None:
        p = "model."
        _require(2 <= self.vocab_size <= 65536, p + "vocab_size", f"must be in [2, 65536] (uint16 shards), got {self.vocab_size}")
        _require(self.num_layers >= 1, p + "num_layers", f"must be >= 1, got {self.num_layers}")
        _require(self.num_heads >= 1 and self.num_kv_heads >= 1, p + "num_heads", "head counts must be >= 1")
        _require(self.model_dim % self.num_heads == 0, p + "model_dim",
                 f"{self.model_dim} is not divisible by model.num_heads={self.num_heads}")
        _require(self.num_heads % self.num_kv_heads == 0, p + "num_kv_heads",
                 f"model.num_heads={self.num_heads} is not divisible by {self.num_kv_heads}")
        _require(self.head_dim % 2 == 0, p + "model_dim", f"head_dim={self.head_dim} must be even")
        _require(0 <= self.rope_dims <= self.head_dim and self.rope_dims % 2 == 0, p + "rope_dims",
                 f"must be even and in [0, head_dim={self.head_dim}], got {self.rope_dims}")
        _require(self.mlp_mult > 0, p + "mlp_mult", f"must be > 0, got {self.mlp_mult}")
        _require(0 <= self.xsa_last_n <= self.num_layers, p + "xsa_last_n",
                 f"must be in [0, model.num_layers={self.num_layers}], got {self.xsa_last_n}")
        _require(self.bigram_buckets == 0 or self.bigram_buckets >= 2, p + "bigram_buckets",
                 f"must be 0 (off) or >= 2, got {self.bigram_buckets}")
        _require(self.bigram_buckets == 0 or self.bigram_dim >= 1, p + "bigram_dim", "must be >= 1")
        _require(all(0 <= i < self.num_layers for i in self.ve_layers), p + "ve_layers",
                 f"layer indices must be in [0, {self.num_layers}), got {self.ve_layers}")
        _require(len(set(self.ve_layers)) == len(self.ve_layers), p + "ve_layers", "duplicate layer index")
        _require(not self.ve_layers or self.ve_dim >= 1, p + "ve_dim", "must be >= 1 when ve_layers is set")
        _require(self.logit_softcap >= 0, p + "logit_softcap", "must be >= 0")
        _require(self.rope_base > 0, p + "rope_base", "must be > 0")
        _require(self.rope_ref_len >= 0, p + "rope_ref_len", "must be >= 0")

    @property
    def head_dim(self) -> int:
        return self.model_dim // self.num_heads

    @property
    def kv_dim(self) -> int:
        return self.head_dim * self.num_kv_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.mlp_mult * self.model_dim)


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Where the challenge-format shards and tokenizer live, and how training windows are drawn."""

    path: str = "data/datasets/fineweb10B_sp1024"
    """Directory holding fineweb_train_*.bin and fineweb_val_*.bin (challenge: DATA_PATH)."""
    tokenizer_path: str = "data/tokenizers/fineweb_1024_bpe.model"
    loader: Literal["coprime", "sequential"] = "coprime"
    """coprime = the multi-shard coprime-stride sampler (STACK.md section 2); sequential = the baseline's."""
    train_shards: int = 0
    """Use only the first k training shards (0 = all)."""
    mix_min_shards: int = 8
    """Coprime loader: shards mixed per batch at the start (clipped to eligible shards and windows)."""
    mix_max_shards: int = 64
    """Coprime loader: shards mixed per batch at full progress. The original derives 8 -> 64 from its
    world size of 8; pgolf fixes both numbers so every world size draws the same windows."""
    alpha_start: float = 0.90
    alpha_end: float = 0.50
    """Coprime loader: shard weight = remaining_blocks ** alpha, alpha moving start -> end."""
    progress_batches: int = 1800
    """Coprime loader: batches over which mixing and alpha ramp from start to end."""

    def __post_init__(self) -> None:
        p = "data."
        _require(self.train_shards >= 0, p + "train_shards", "must be >= 0")
        _require(1 <= self.mix_min_shards <= self.mix_max_shards, p + "mix_min_shards",
                 f"need 1 <= mix_min_shards <= mix_max_shards, got {self.mix_min_shards}, {self.mix_max_shards}")
        _require(self.progress_batches >= 1, p + "progress_batches", "must be >= 1")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """The training loop (STACK.md section 4)."""

    seq_len: int = 2048
    batch_tokens: int = 786_432
    """Global tokens per optimizer step, fixed across world sizes (accumulation is derived)."""
    grad_accum: int = 0
    """Micro-batches per rank per step; 0 = auto (the challenge's 8 // world_size, at least 1). Any value
    gives the same math: every step trains on the same global windows, averaged over all of them."""
    iterations: int = 20_000
    max_wallclock_seconds: float = 600.0
    """Training-time cap, measured from after the compile warm-up; 0 = no cap."""
    warmup_steps: int = 20
    """Compile/kernel warm-up steps, after which weights, optimizer and loader are restored."""
    warmdown_iters: int = 4000
    """Linear LR warmdown length, converted to wallclock with the measured step time."""
    val_every: int = 4000
    """Periodic validation cadence in steps (the clock pauses); 0 = only at the end."""
    val_max_tokens: int = 0
    """Validation during and at the end of training on a prefix of the stream (0 = all of it). This
    is a diagnostic; the score of record comes from evaluating the artifact."""
    log_every: int = 200
    ema_decay: float = 0.997
    """EMA of all weights, loaded at the end; 0 = off."""
    grad_clip_norm: float = 0.3
    """Global gradient-norm clip; 0 = off."""
    late_qat_threshold: float = 0.0
    """Straight-through int fake-quant of matrices once the LR multiplier drops below this; 0 = off."""
    checkpoint_every: int = 0
    """Write a resumable checkpoint every k steps (0 = only at the end)."""
    compile: Literal["auto", "on", "off"] = "auto"
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    attention: Literal["auto", "fa3", "sdpa"] = "auto"

    def __post_init__(self) -> None:
        p = "train."
        _require(self.seq_len >= 2, p + "seq_len", f"must be >= 2, got {self.seq_len}")
        _require(self.batch_tokens >= self.seq_len, p + "batch_tokens", "must be >= train.seq_len")
        _require(self.batch_tokens % self.seq_len == 0, p + "batch_tokens",
                 f"{self.batch_tokens} is not a multiple of train.seq_len={self.seq_len}")
        _require(self.iterations >= 0, p + "iterations", "must be >= 0")
        _require(self.grad_accum >= 0, p + "grad_accum", "must be >= 0 (0 = auto)")
        _require(self.max_wallclock_seconds >= 0, p + "max_wallclock_seconds", "must be >= 0 (0 = no cap)")
        for name in ("warmup_steps", "warmdown_iters", "val_every", "val_max_tokens", "checkpoint_every"):
            _require(getattr(self, name) >= 0, p + name, "must be >= 0")
        _require(self.log_every >= 1, p + "log_every", "must be >= 1")
        _require(0.0 <= self.ema_decay < 1.0, p + "ema_decay", "must be in [0, 1)")
        _require(self.grad_clip_norm >= 0, p + "grad_clip_norm", "must be >= 0")
        _require(0.0 <= self.late_qat_threshold <= 1.0, p + "late_qat_threshold", "must be in [0, 1]")


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """Optimizer groups by parameter role (STACK.md section 4.2-4.3)."""

    matrix_optimizer: Literal["muon", "adamw"] = "muon"
    matrix_lr: float = 0.025
    scalar_lr: float = 0.025
    tied_embed_lr: float = 0.035
    embed_lr: float = 0.6
    """Token-embedding LR when embeddings are untied."""
    head_lr: float = 0.008
    """Output-head LR when embeddings are untied."""
    muon_momentum: float = 0.99
    muon_momentum_warmup_start: float = 0.92
    muon_momentum_warmup_steps: int = 1500
    muon_backend_steps: int = 5
    muon_nesterov: bool = True
    muon_wd: float = 0.04
    muon_sharded: bool = True
    """Shard the Newton-Schulz work across ranks (Parallel Muon); a no-op at world size 1."""
    adam_wd: float = 0.04
    beta1: float = 0.9
    beta2: float = 0.95
    adam_eps: float = 1e-8

    def __post_init__(self) -> None:
        p = "optim."
        for name in ("matrix_lr", "scalar_lr", "tied_embed_lr", "embed_lr", "head_lr", "muon_wd", "adam_wd"):
            _require(getattr(self, name) >= 0, p + name, "must be >= 0")
        for name in ("muon_momentum", "muon_momentum_warmup_start", "beta1", "beta2"):
            _require(0.0 <= getattr(self, name) < 1.0, p + name, "must be in [0, 1)")
        _require(self.muon_backend_steps >= 1, p + "muon_backend_steps", "must be >= 1")
        _require(self.muon_momentum_warmup_steps >= 0, p + "muon_momentum_warmup_steps", "must be >= 0")
        _require(self.adam_eps > 0, p + "adam_eps", "must be > 0")


@dataclass(frozen=True, kw_only=True)
class QuantConfig:
    """Post-training quantization and the artifact (STACK.md section 5)."""

    method: Literal["gptq", "rtn", "none"] = "gptq"
    matrix_bits: int = 6
    """Bits for attention/MLP matrices (int5..int8, symmetric per row)."""
    embed_bits: int = 8
    """Bits for token, bigram and value-embedding tables."""
    clip: Literal["percentile", "sdclip"] = "percentile"
    clip_select: Literal["matrix", "row"] = "matrix"
    """How a matrix's clip candidate is kept: "matrix" = lowest weight MSE of the whole matrix (the
    original); "row" = per row, lowest layer-output error (GPTQ; RTN: per-row weight error)."""
    matrix_sdclip_k: float = 12.85
    embed_sdclip_k: float = 20.0
    block_size: int = 128
    damp: float = 0.01
    act_order: bool = True
    scale_floor: float = 1e-8
    head_gptq: bool = True
    """With method=gptq: GPTQ the output head's table (the tied token embedding, or the untied head) at
    embed_bits with the Hessian of the head's input, each row's clip chosen by output error; False = the
    original one-clip RTN (STACK.md 5.1). The lookup of a tied table is not in that Hessian, so it is
    damped harder (head_damp) to keep the rows near RTN's error (dev/LOG.md, 2026-11-26)."""
    head_damp: float = 0.3
    calib_source: Literal["selfgen", "train"] = "selfgen"
    calib_seqs: int = 64
    calib_seq_len: int = 2048
    calib_temperature: float = 0.8
    calib_batch: int = 8
    calib_kv_cache: bool = True
    """Sample the calibration text with a KV cache (O(L) per sequence); False = PR #1019's full re-forward
    per token (O(L^2); beyond rope_ref_len its rotary base drifts with the prefix length)."""
    calib_reserve_seconds: float = 0.0
    """With calib_source=train: seconds reserved inside the training cap for calibration."""
    prune_target_bytes: int = 15_990_000
    """Selective +/-1 pruning target on the TOTAL (code + compressed model), decimal bytes."""
    compressor: Literal["auto", "lzma", "brotli", "zstd"] = "auto"
    layout: Literal["int8", "int6p"] = "int8"
    """How int6 values are laid out before compression: int8 planes, or 4 values packed in 3 bytes."""

    def __post_init__(self) -> None:
        p = "quant."
        _require(5 <= self.matrix_bits <= 8, p + "matrix_bits", f"must be in [5, 8], got {self.matrix_bits}")
        _require(5 <= self.embed_bits <= 8, p + "embed_bits", f"must be in [5, 8], got {self.embed_bits}")
        _require(self.block_size >= 1, p + "block_size", "must be >= 1")
        _require(self.damp >= 0, p + "damp", "must be >= 0")
        _require(self.head_damp >= 0, p + "head_damp", "must be >= 0")
        _require(self.scale_floor > 0, p + "scale_floor", "must be > 0")
        _require(self.calib_seqs >= 1 and self.calib_seq_len >= 2 and self.calib_batch >= 1, p + "calib_seqs",
                 "calibration sizes must be positive (calib_seq_len >= 2)")
        _require(self.calib_temperature > 0, p + "calib_temperature", "must be > 0")
        _require(self.prune_target_bytes > 0, p + "prune_target_bytes", "must be > 0")
        _require(self.calib_reserve_seconds >= 0, p + "calib_reserve_seconds", "must be >= 0")


@dataclass(frozen=True, kw_only=True)
class SlidingConfig:
    stride: int = 64
    """Score only the last `stride` targets of each window after the first."""
    batch_windows: int = 32

    def __post_init__(self) -> None:
        _require(self.stride >= 1, "score.sliding.stride", "must be >= 1")
        _require(self.batch_windows >= 1, "score.sliding.batch_windows", "must be >= 1")


@dataclass(frozen=True, kw_only=True)
class SlotConfig:
    """Causal SLOT: a per-window logit bias fitted on already-scored positions (STACK.md section 8.4)."""

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
    """Test-time training (STACK.md section 7.2)."""

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
        _require(self.chunk_tokens >= 1, p + "chunk_tokens", "must be >= 1")
        _require(self.epochs >= 0, p + "epochs", "must be >= 0")
        _require(self.lr >= 0, p + "lr", "must be >= 0")
        _require(0 <= self.momentum < 1, p + "momentum", "must be in [0, 1)")
        _require(self.grad_clip >= 0, p + "grad_clip", "must be >= 0")
        _require(0 < self.first_block_lr_mult <= 1, p + "first_block_lr_mult", "must be in (0, 1]")
        _require(self.batch_seqs >= 1, p + "batch_seqs", "must be >= 1")
        _require(self.freeze_blocks >= 0, p + "freeze_blocks", "must be >= 0")


SCORE_MODES = ("plain", "sliding", "slot", "ttt", "ttt+slot")


@dataclass(frozen=True, kw_only=True)
class ScoreConfig:
    """Evaluation of the artifact on the validation stream (STACK.md sections 6-8)."""

    modes: tuple[str, ...] = ("sliding",)
    """Evaluation modes, any of SCORE_MODES (plain, sliding, slot, ttt, ttt+slot)."""
    seq_len: int = 2048
    """Window length T for every mode."""
    max_val_tokens: int = 0
    """Score only the first N validation tokens (0 = all). Quick checks only: a partial score is labelled
    as such and is never a challenge result."""
    sliding: SlidingConfig = field(default_factory=SlidingConfig)
    slot: SlotConfig = field(default_factory=SlotConfig)
    ttt: TTTConfig = field(default_factory=TTTConfig)

    def __post_init__(self) -> None:
        bad = [m for m in self.modes if m not in SCORE_MODES]
        _require(not bad, "score.modes", f"unknown mode(s) {bad}; choose from {list(SCORE_MODES)}")
        _require(self.seq_len >= 2, "score.seq_len", "must be >= 2")
        _require(self.max_val_tokens >= 0, "score.max_val_tokens", "must be >= 0 (0 = the whole stream)")
        _require(self.sliding.stride <= self.seq_len, "score.sliding.stride",
                 f"{self.sliding.stride} exceeds score.seq_len={self.seq_len}")


@dataclass(frozen=True, kw_only=True)
class BudgetConfig:
    """The challenge's limits, checked by the auditor."""

    artifact_bytes_limit: int = 16_000_000
    """Decimal bytes: code + compressed model."""
    train_seconds_limit: float = 600.0
    eval_seconds_limit: float = 600.0
    target_hardware: str = "8xH100 SXM"

    def __post_init__(self) -> None:
        _require(self.artifact_bytes_limit > 0, "budget.artifact_bytes_limit", "must be > 0")


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    preset: str = "record"
    """Name of the preset this tree was derived from (diffs are against it)."""
    seed: int = 1337
    run_id: str = ""
    """Run name; empty = derived from preset, seed and time when the run starts."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)

    def __post_init__(self) -> None:
        _require(0 <= self.seed < 2**63, "seed", f"must be in [0, 2^63), got {self.seed}")


# --------------------------------------------------------------------------------------------------
# Generic tree helpers
# --------------------------------------------------------------------------------------------------


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples become lists) suitable for JSON."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def config_hash(cfg: RunConfig) -> str:
    """sha256 of the canonical JSON of the tree, excluding run_id (a label, not a setting)."""
    d = to_dict(cfg)
    d.pop("run_id", None)
    blob = json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """{dotted.key: leaf value} for every leaf of the tree, in declaration order."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            out.update(flatten(v, prefix + f.name + "."))
        else:
            out[prefix + f.name] = v
    return out


def _leaf_types(cls: type, prefix: str = "") -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        t = hints[f.name]
        if isinstance(t, type) and dataclasses.is_dataclass(t):
            out.update(_leaf_types(t, prefix + f.name + "."))
        else:
            out[prefix + f.name] = t
    return out


def known_keys() -> dict[str, Any]:
    """{dotted key: annotation} for every settable leaf of RunConfig."""
    return _leaf_types(RunConfig)


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _describe(t: Any) -> str:
    if typing.get_origin(t) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(t))
    if typing.get_origin(t) is tuple:
        return f"comma-separated list of {typing.get_args(t)[0].__name__}"
    return getattr(t, "__name__", str(t))


def coerce(key: str, raw: Any, t: Any, source: str) -> Any:
    """Convert `raw` (usually a string) to annotation `t`, or raise ConfigError naming key and source."""
    where = f" (from {source})" if source else ""

    def fail() -> ConfigError:
        return ConfigError(f"{key}: cannot use {raw!r}{where}: expected {_describe(t)}")

    origin = typing.get_origin(t)
    if origin is Literal:
        choices = typing.get_args(t)
        if raw in choices:
            return raw
        raise fail()
    if origin is tuple:
        elem = typing.get_args(t)[0]
        if isinstance(raw, (list, tuple)):
            items = list(raw)
        else:
            text = str(raw).strip()
            items = [] if text in ("", "()", "[]") else [s.strip() for s in text.strip("()[]").split(",")]
        return tuple(coerce(key, item, elem, source) for item in items if item != "")
    if origin in (typing.Union, types.UnionType):
        raise fail()  # no optional fields in the tree
    if t is bool:
        if isinstance(raw, bool):
            return raw
        s = str(raw).strip().lower()
        if s in _TRUE:
            return True
        if s in _FALSE:
            return False
        raise fail()
    if t is int:
        if isinstance(raw, bool):
            raise fail()
        if isinstance(raw, int):
            return raw
        s = str(raw).strip().replace("_", "")
        try:
            return int(s)
        except ValueError:
            try:
                f = float(s)
            except ValueError:
                raise fail() from None
            if f.is_integer():
                return int(f)
            raise fail() from None
    if t is float:
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return float(raw)
        try:
            return float(str(raw).strip().replace("_", ""))
        except ValueError:
            raise fail() from None
    if t is str:
        return str(raw)
    raise ConfigError(f"{key}: unsupported field type {t!r}")


def _unknown_key(key: str, source: str) -> ConfigError:
    keys = list(known_keys())
    near = difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(near)}?" if near else "; `pgolf config show` lists every key"
    return ConfigError(f"unknown config key {key!r} (from {source}){hint}")


def _set_path(cfg: Any, parts: list[str], value: Any) -> Any:
    head = parts[0]
    if len(parts) == 1:
        return dataclasses.replace(cfg, **{head: value})
    return dataclasses.replace(cfg, **{head: _set_path(getattr(cfg, head), parts[1:], value)})


@dataclass(frozen=True)
class Override:
    key: str
    value: Any
    source: str


def apply_overrides(cfg: RunConfig, overrides: Iterable[Override]) -> RunConfig:
    """Apply (key, raw value, source) overrides in order; the tree is validated once at the end.

    Validation of a section runs in its __post_init__, so intermediate replace() calls may raise
    for a combination that a later override would have fixed; we therefore build the flat dict
    first and construct the tree once.
    """
    types_ = known_keys()
    flat = flatten(cfg)
    for ov in overrides:
        if ov.key not in types_:
            raise _unknown_key(ov.key, ov.source)
        flat[ov.key] = coerce(ov.key, ov.value, types_[ov.key], ov.source)
    return from_flat(flat)


def from_flat(flat: Mapping[str, Any]) -> RunConfig:
    """Build a RunConfig from {dotted key: typed value}; missing keys take the class defaults."""
    types_ = known_keys()
    for k in flat:
        if k not in types_:
            raise _unknown_key(k, "dict")

    def build(cls: type, prefix: str) -> Any:
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for f in dataclasses.fields(cls):
            t = hints[f.name]
            if isinstance(t, type) and dataclasses.is_dataclass(t):
                kwargs[f.name] = build(t, prefix + f.name + ".")
            elif prefix + f.name in flat:
                kwargs[f.name] = flat[prefix + f.name]
        return cls(**kwargs)

    return build(RunConfig, "")


def from_dict(d: Mapping[str, Any], source: str = "config.json") -> RunConfig:
    """Rebuild a tree from `to_dict` output (e.g. a run's config.json); unknown keys are errors."""
    flat: dict[str, Any] = {}
    types_ = known_keys()

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for k, v in node.items():
            key = prefix + k
            if isinstance(v, Mapping):
                walk(v, key + ".")
            elif key not in types_:
                raise _unknown_key(key, source)
            else:
                flat[key] = coerce(key, v, types_[key], source)

    walk(d, "")
    return from_flat(flat)


# --------------------------------------------------------------------------------------------------
# Environment carriers
# --------------------------------------------------------------------------------------------------

ENV_PREFIX = "PGOLF_"
RESERVED_ENV = {"PGOLF_PRESET"}
"""PGOLF_ variables that are not config keys (PGOLF_PRESET selects the preset of a bundle)."""

LEGACY_ENV: dict[str, str] = {
    # The challenge's train_gpt.py names that map one-to-one onto a key. Booleans accept 1/0.
    "DATA_PATH": "data.path",
    "TOKENIZER_PATH": "data.tokenizer_path",
    "RUN_ID": "run_id",
    "SEED": "seed",
    "VOCAB_SIZE": "model.vocab_size",
    "NUM_LAYERS": "model.num_layers",
    "MODEL_DIM": "model.model_dim",
    "NUM_HEADS": "model.num_heads",
    "NUM_KV_HEADS": "model.num_kv_heads",
    "MLP_MULT": "model.mlp_mult",
    "TIE_EMBEDDINGS": "model.tie_embeddings",
    "ROPE_BASE": "model.rope_base",
    "ROPE_DIMS": "model.rope_dims",
    "LOGIT_SOFTCAP": "model.logit_softcap",
    "QK_GAIN_INIT": "model.qk_gain_init",
    "LN_SCALE": "model.ln_scale",
    "XSA_LAST_N": "model.xsa_last_n",
    "BIGRAM_VOCAB_SIZE": "model.bigram_buckets",
    "BIGRAM_DIM": "model.bigram_dim",
    "VE_DIM": "model.ve_dim",
    "VE_LAYERS": "model.ve_layers",
    "TIED_EMBED_INIT_STD": "model.tied_embed_init_std",
    "ITERATIONS": "train.iterations",
    "MAX_WALLCLOCK_SECONDS": "train.max_wallclock_seconds",
    "TRAIN_SEQ_LEN": "train.seq_len",
    "TRAIN_BATCH_TOKENS": "train.batch_tokens",
    "WARMUP_STEPS": "train.warmup_steps",
    "WARMDOWN_ITERS": "train.warmdown_iters",
    "VAL_LOSS_EVERY": "train.val_every",
    "TRAIN_LOG_EVERY": "train.log_every",
    "EMA_DECAY": "train.ema_decay",
    "GRAD_CLIP_NORM": "train.grad_clip_norm",
    "MATRIX_LR": "optim.matrix_lr",
    "SCALAR_LR": "optim.scalar_lr",
    "TIED_EMBED_LR": "optim.tied_embed_lr",
    "EMBED_LR": "optim.embed_lr",
    "HEAD_LR": "optim.head_lr",
    "MUON_MOMENTUM": "optim.muon_momentum",
    "MUON_MOMENTUM_WARMUP_START": "optim.muon_momentum_warmup_start",
    "MUON_MOMENTUM_WARMUP_STEPS": "optim.muon_momentum_warmup_steps",
    "MUON_BACKEND_STEPS": "optim.muon_backend_steps",
    "MUON_WD": "optim.muon_wd",
    "ADAM_WD": "optim.adam_wd",
    "BETA1": "optim.beta1",
    "BETA2": "optim.beta2",
    "ADAM_EPS": "optim.adam_eps",
    "MATRIX_BITS": "quant.matrix_bits",
    "EMBED_BITS": "quant.embed_bits",
    "COMPRESSOR": "quant.compressor",
    "GPTQ_RESERVE_SECONDS": "quant.calib_reserve_seconds",
    "EVAL_SEQ_LEN": "score.seq_len",
    "EVAL_STRIDE": "score.sliding.stride",
    "TTT_LR": "score.ttt.lr",
    "TTT_EPOCHS": "score.ttt.epochs",
    "TTT_CHUNK_SIZE": "score.ttt.chunk_tokens",
    "TTT_MOMENTUM": "score.ttt.momentum",
}


def env_overrides(env: Mapping[str, str]) -> list[Override]:
    """Overrides carried by the environment: legacy names first, then PGOLF_ names.

    Any PGOLF_ variable that is not reserved must name a config key; a typo is an error.
    """
    out: list[Override] = []
    for name in sorted(LEGACY_ENV):
        if name in env:
            out.append(Override(LEGACY_ENV[name], env[name], f"env {name}"))
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name in RESERVED_ENV:
            continue
        key = name[len(ENV_PREFIX):].lower().replace("__", ".")
        out.append(Override(key, env[name], f"env {name}"))
    return out


def parse_set(items: Iterable[str]) -> list[Override]:
    """Parse `--set key=value` items."""
    out = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        key, value = item.split("=", 1)
        out.append(Override(key.strip(), value, f"--set {key.strip()}"))
    return out


def resolve(preset: str, sets: Iterable[str] = (), env: Mapping[str, str] | None = None,
            seed: int | None = None) -> tuple[RunConfig, list[Override]]:
    """Preset -> env (legacy, then PGOLF_) -> --set -> --seed. Returns the tree and what was applied."""
    from pgolf.presets import get_preset

    if env is None:
        import os

        env = os.environ
    base = get_preset(preset)
    applied = env_overrides(env) + parse_set(sets)
    if seed is not None:
        applied.append(Override("seed", seed, "--seed"))
    return apply_overrides(base, applied), applied


def diff(cfg: RunConfig, base: RunConfig) -> dict[str, tuple[Any, Any]]:
    """{key: (base value, new value)} for every leaf that differs."""
    a, b = flatten(base), flatten(cfg)
    return {k: (a[k], b[k]) for k in b if a[k] != b[k]}
