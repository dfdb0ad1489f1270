"""Overrides of the config tree, and where they come from.

A resolved config is a preset (`pgolf.presets`) overridden exactly once, in this order of precedence
(later wins):

1. the challenge's own environment names (`NUM_LAYERS=11`, `SEED=42`, ...; `LEGACY_ENV` below),
2. `PGOLF_SECTION__KEY=value` environment variables (double underscore = dot),
3. `--set section.key=value` on the command line.

Every value is coerced from the field's annotation; unknown keys and ill-typed values raise
`ConfigError` naming the key and where it came from. After resolution the tree is the only source of
truth: it is printed, diffed against its preset and hashed (`config_hash`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pgolf.config.base import ConfigError
from pgolf.config.schema import RunConfig
from pgolf.config.tree import coerce, flatten, from_flat, known_keys, unknown_key


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
            raise unknown_key(ov.key, ov.source)
        flat[ov.key] = coerce(ov.key, ov.value, types_[ov.key], ov.source)
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
