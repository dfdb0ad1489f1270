"""The config tree's sections (data, train, optim, quant, score, budget) and the root `RunConfig`.

`RunConfig` holds every knob of the pipeline in sections. It is built by a preset function
(`pgolf.presets`) and overridden exactly once by `presets.resolve()` (see `pgolf.config.overrides`).
Every section validates itself in `__post_init__` and names the dotted key of a bad value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pgolf.config.base import _check_fields, _require
from pgolf.config.model import ModelConfig
from pgolf.config.score import ScoreConfig


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Where the challenge-format shards and tokenizer live, and how training windows are drawn."""

    path: str = "data/datasets/fineweb10B_sp1024"
    """Directory holding fineweb_train_*.bin and fineweb_val_*.bin (challenge: DATA_PATH)."""
    tokenizer_path: str = "data/tokenizers/fineweb_1024_bpe.model"
    loader: Literal["coprime", "sequential"] = "coprime"
    """coprime = the multi-shard coprime-stride sampler (docs/DESIGN.md#data-loader); sequential = the baseline's."""
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
        _check_fields(self, p)
        _require(self.train_shards >= 0, p + "train_shards", "must be >= 0")
        _require(1 <= self.mix_min_shards <= self.mix_max_shards, p + "mix_min_shards",
                 f"need 1 <= mix_min_shards <= mix_max_shards, got {self.mix_min_shards}, {self.mix_max_shards}")
        _require(self.progress_batches >= 1, p + "progress_batches", "must be >= 1")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """The training loop (docs/DESIGN.md#training)."""

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
    warmdown_frac: float = 0.0
    """> 0: the warmdown is instead the last warmdown_frac of the wallclock cap (of `iterations` without a
    cap), the same share of the run on a fast or a slow machine; 0 = use warmdown_iters."""
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
    """Training precision: auto = bf16 autocast on CUDA; on CPU bf16 only where a short measurement finds
    bf16 matmuls faster than fp32 (CPUs with AMX / AVX512-BF16 units), else fp32 (runtime.choose_precision)."""
    attention: Literal["auto", "fa3", "sdpa"] = "auto"

    def __post_init__(self) -> None:
        p = "train."
        _check_fields(self, p)
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
        _require(0.0 <= self.warmdown_frac <= 1.0, p + "warmdown_frac", "must be in [0, 1] (0 = use warmdown_iters)")


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """Optimizer groups by parameter role (docs/DESIGN.md#train-optimizers)."""

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
        _check_fields(self, p)
        for name in ("matrix_lr", "scalar_lr", "tied_embed_lr", "embed_lr", "head_lr", "muon_wd", "adam_wd"):
            _require(getattr(self, name) >= 0, p + name, "must be >= 0")
        for name in ("muon_momentum", "muon_momentum_warmup_start", "beta1", "beta2"):
            _require(0.0 <= getattr(self, name) < 1.0, p + name, "must be in [0, 1)")
        _require(self.muon_backend_steps >= 1, p + "muon_backend_steps", "must be >= 1")
        _require(self.muon_momentum_warmup_steps >= 0, p + "muon_momentum_warmup_steps", "must be >= 0")
        _require(self.adam_eps > 0, p + "adam_eps", "must be > 0")


@dataclass(frozen=True, kw_only=True)
class QuantConfig:
    """Post-training quantization and the artifact (docs/DESIGN.md#quantization)."""

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
    original one-clip RTN (docs/DESIGN.md#quant-schemes). The lookup of a tied table is not in that Hessian, so it is
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
        _check_fields(self, p)
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
class BudgetConfig:
    """The challenge's limits, checked by the auditor."""

    artifact_bytes_limit: int = 16_000_000
    """Decimal bytes: code + compressed model."""
    train_seconds_limit: float = 600.0
    eval_seconds_limit: float = 600.0
    target_hardware: str = "8xH100 SXM"

    def __post_init__(self) -> None:
        _check_fields(self, "budget.")
        _require(self.artifact_bytes_limit > 0, "budget.artifact_bytes_limit", "must be > 0")
        for name in ("train_seconds_limit", "eval_seconds_limit"):
            _require(getattr(self, name) > 0, "budget." + name, f"must be > 0, got {getattr(self, name)}")


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
        _check_fields(self, "")
        _require(0 <= self.seed < 2**63, "seed", f"must be in [0, 2^63), got {self.seed}")
