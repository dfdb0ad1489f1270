"""One typed, frozen configuration tree for a whole run (`RunConfig`), in four modules:

- `base`: `ConfigError` and the validation helper;
- `model` / `schema` / `score`: the sections, each validated in `__post_init__` (the dotted key is named);
- `tree`: dicts, flat dotted keys, hashing, coercion of raw strings to a field's type;
- `overrides`: environment and `--set` carriers and how they are applied.

Presets (functions returning a full tree) and `resolve()` live one layer up, in `pgolf.presets`.
Nothing here imports another pgolf module except `pgolf.errors`. The names below are the public API.
"""

from pgolf.config.base import ConfigError
from pgolf.config.model import ModelConfig
from pgolf.config.overrides import (
    ENV_PREFIX,
    LEGACY_ENV,
    RESERVED_ENV,
    Override,
    apply_overrides,
    env_overrides,
    parse_set,
)
from pgolf.config.schema import BudgetConfig, DataConfig, OptimConfig, QuantConfig, RunConfig, TrainConfig
from pgolf.config.score import (
    LORA_TARGETS,
    SCORE_MODES,
    LoraConfig,
    ScoreConfig,
    SlidingConfig,
    SlotConfig,
    TTTConfig,
)
from pgolf.config.tree import (
    coerce,
    coerce_json,
    config_hash,
    diff,
    flatten,
    from_dict,
    from_flat,
    known_keys,
    model_from_dict,
    to_dict,
)

__all__ = [
    "ConfigError", "ModelConfig", "ENV_PREFIX", "LEGACY_ENV", "RESERVED_ENV", "Override", "apply_overrides",
    "env_overrides", "parse_set", "SCORE_MODES", "BudgetConfig", "DataConfig", "OptimConfig", "QuantConfig",
    "RunConfig", "ScoreConfig", "SlidingConfig", "SlotConfig", "TrainConfig", "TTTConfig", "LoraConfig",
    "LORA_TARGETS", "coerce", "coerce_json",
    "config_hash", "diff", "flatten", "from_dict", "from_flat", "known_keys", "model_from_dict", "to_dict",
]
