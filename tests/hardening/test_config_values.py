"""Config values that passed validation and crashed later (issue 13, item 5), and one validation for every
source of a config: presets and direct construction, --set, the environment, a run's config.json (strict
JSON types) and an artifact manifest (tests/hardening/test_artifacts.py).

Every float of every section must be finite (a `>= 0` check lets +inf through and NaN fails every
comparison silently only where one exists); every field has its annotated type; model sizes are bounded
(docs/DESIGN.md#size-rule). A refusal is ONE `pgolf: error:` line naming the dotted key.

The CLI regression cases are the issue's own inputs. Set HARDENING_CHILD_SRC=/path/to/a/tree/src to run
them against another tree, one child process each: on the landed tree (3a30210) every one fails (a traceback
or a silent exit 0). `test_config_float_fuzz` runs every float key x every non-finite spelling through --set,
and every key x ill-typed JSON values through a run's config.json, in one child (`cli_fuzz.run_many`).
"""

from __future__ import annotations

import json
import math
import os
import typing
from pathlib import Path
from typing import Literal

import pytest

from pgolf.config import ConfigError, ModelConfig, flatten, from_dict, from_flat, known_keys, model_from_dict, to_dict
from pgolf.config.model import CAP_BYTES, MAX_LAYERS, MAX_PARAMS, MAX_WIDTH
from pgolf.presets import PRESETS, resolve, tiny
from tests.helpers.cli_fuzz import broken_promises, run_bounded, run_many

OTHER_SRC = os.environ.get("HARDENING_CHILD_SRC")
FLOAT_KEYS = [k for k, t in known_keys().items()
              if t is float or (typing.get_origin(t) is tuple and typing.get_args(t)[0] is float)]


def run_cases(cases: list[list[str]], env: dict[str, str] | None = None):
    """All cases in one child, or with HARDENING_CHILD_SRC one child each against that tree."""
    if OTHER_SRC:
        return [run_bounded(c, env={"PYTHONPATH": OTHER_SRC, **(env or {})}, cpu=60, wall=90) for c in cases]
    return run_many(cases, env=env, seconds_each=30)


def run_dir_with(root: Path, name: str, key: str, token: str) -> Path:
    """A run directory whose config.json is the tiny preset with `key` set to the raw JSON `token`."""
    d = to_dict(tiny())
    node = d
    *path, leaf = key.split(".")
    for part in path:
        node = node[part]
    node[leaf] = "@@VALUE@@"
    run = root / name
    run.mkdir()
    text = json.dumps({"config": d, "config_hash": "crafted"}).replace('"@@VALUE@@"', token)
    (run / "config.json").write_text(text)
    return run


# ------------------------------------------------------------------------------------------ regressions

SET_REGRESSIONS = [  # (verb, key=value): item 5 of the issue
    ("budget", "model.mlp_mult=inf"),  # OverflowError
    ("budget", "model.mlp_mult=1e-9"),  # an MLP of width 0 (ZeroDivisionError later)
    ("budget", "model.rope_dims=2"),  # rope_ref_len > 0 with 2 rotary dims: ValueError while building
    ("config", "data.alpha_start=nan"), ("config", "data.alpha_end=inf"), ("config", "model.rope_base=inf"),
    ("config", "model.leaky_slope=nan"), ("config", "model.qk_gain_init=inf"),
    ("config", "model.tied_embed_init_std=nan"), ("config", "model.logit_softcap=inf"),
    ("config", "train.max_wallclock_seconds=inf"), ("config", "optim.adam_eps=inf"), ("config", "optim.matrix_lr=inf"),
    ("config", "score.ttt.lr=inf"), ("config", "score.slot.lr=nan"), ("config", "budget.train_seconds_limit=inf"),
    ("config", "budget.eval_seconds_limit=nan"),
]
JSON_REGRESSIONS = [("model.mlp_mult", "Infinity"), ("model.num_layers", "2.0"), ("data.alpha_start", "NaN"),
                    ("optim.adam_eps", "1e999"), ("model.ve_layers", "[0.5]"), ("model.smear_gate", "1")]


def verb(v: str) -> list[str]:
    return ["budget", "--preset", "tiny"] if v == "budget" else ["config", "show", "--preset", "tiny"]


def test_non_finite_and_degenerate_values_are_one_error_line(tmp_path):
    names = [f"--set {kv}" for _, kv in SET_REGRESSIONS] + [f"config.json {k}={t}" for k, t in JSON_REGRESSIONS]
    cases = [[*verb(v), "--set", kv] for v, kv in SET_REGRESSIONS]
    mentions = [(kv.split("=")[0],) for _, kv in SET_REGRESSIONS]
    for i, (key, token) in enumerate(JSON_REGRESSIONS):
        run = run_dir_with(tmp_path, f"run{i}", key, token)
        cases.append(["budget", "--run-dir", str(run), "--code-bytes", "0"])
        mentions.append((key, str(run / "config.json")))
    assert broken_promises(names, mentions, run_cases(cases)) == []


def test_the_environment_is_validated_like_set():
    cases = [["budget", "--preset", "tiny"], ["config", "show", "--preset", "tiny"]]
    results = run_cases(cases, env={"MLP_MULT": "inf"})
    assert broken_promises(["budget", "config show"], [("model.mlp_mult", "env MLP_MULT")] * 2, results) == []


# ------------------------------------------------------------------------------------------ in process

@pytest.mark.parametrize("key", FLOAT_KEYS)
def test_every_float_refuses_nan_and_inf_however_the_tree_is_built(key):
    t = known_keys()[key]
    for bad in (math.nan, math.inf, -math.inf):
        value = (0.0, bad) if typing.get_origin(t) is tuple else bad
        with pytest.raises(ConfigError, match=f"^{key}: (element nan: |element inf: |element -inf: )?must be a finite"):
            from_flat({key: value})  # direct construction: presets, dataclasses.replace
        with pytest.raises(ConfigError, match=f"^{key}: cannot use"):
            resolve("tiny", [f"{key}={'0,' if typing.get_origin(t) is tuple else ''}{bad}"], {})
    env = "PGOLF_" + key.upper().replace(".", "__")
    with pytest.raises(ConfigError, match=f"^{key}: cannot use 'nan' \\(from env {env}\\)"):
        resolve("tiny", [] if typing.get_origin(t) is not tuple else [f"{key}=0,0"], {env: "nan"})


@pytest.mark.parametrize("field,value", [
    ("num_layers", 2.0), ("num_layers", True), ("model_dim", "64"), ("smear_gate", 1), ("mlp_mult", True),
    ("mlp_activation", "evil"), ("ve_layers", (0.5,)), ("ve_layers", [1]), ("ve_layers", (True,)),
    ("size_limits", "yes"),
])
def test_direct_construction_checks_types(field, value):
    with pytest.raises(ConfigError, match=f"^model.{field}: "):
        ModelConfig(**(dict(xsa_last_n=2, ve_layers=(1,), num_layers=2) | {field: value}))


@pytest.mark.parametrize("field,value", [
    ("num_layers", 2.0), ("num_layers", "2"), ("num_layers", True), ("mlp_mult", "2.0"), ("mlp_mult", None),
    ("tie_embeddings", 1), ("mlp_activation", "evil"), ("mlp_activation", 0), ("ve_layers", [0.5]),
    ("ve_layers", "1"), ("ve_layers", [True]), ("leaky_slope", math.nan), ("logit_softcap", math.inf),
])
def test_json_sources_are_strict(field, value):
    d = to_dict(tiny())
    d["model"][field] = value
    with pytest.raises(ConfigError, match=f"^model.{field}: cannot use .* \\(from x.json\\): expected"):
        from_dict(d, source="x.json")
    with pytest.raises(ConfigError, match=f"^model.{field}: cannot use .* \\(from m\\): expected"):
        model_from_dict(d["model"], "m")


def test_set_still_parses_strings():
    cfg, _ = resolve("tiny", ["model.num_layers=3", "model.xsa_last_n=3", "model.mlp_mult=3", "train.ema_decay=0",
                              "model.size_limits=false"], {})
    assert (cfg.model.num_layers, cfg.model.mlp_mult, cfg.train.ema_decay, cfg.model.size_limits) == (3, 3.0, 0.0, False)
    assert from_dict(to_dict(cfg)) == cfg


def test_the_parameter_bound_and_its_opt_out():
    assert MAX_PARAMS == int(CAP_BYTES * 8 / math.log2(3)) == 80_759_008
    assert all(f().model.num_params <= MAX_PARAMS / 2 for f in PRESETS.values())
    big = dict(vocab_size=1024, num_layers=10, model_dim=1024, num_heads=8, num_kv_heads=4, mlp_mult=4.0,
               xsa_last_n=10, ve_layers=(8, 9))
    with pytest.raises(ConfigError, match=r"^model.size_limits: 117,094,484 parameters exceed the 80,759,008"):
        ModelConfig(**big)
    with pytest.raises(ConfigError, match="^model.size_limits"):
        resolve("record", ["model.model_dim=1024", "model.mlp_mult=4"], {})
    assert ModelConfig(**big, size_limits=False).num_params == 117_094_484
    cfg, _ = resolve("record", ["model.model_dim=1024", "model.mlp_mult=4", "model.size_limits=false"], {})
    assert cfg.model.num_params > MAX_PARAMS


@pytest.mark.parametrize("changes,key", [
    ({"num_layers": MAX_LAYERS + 1, "xsa_last_n": 0}, "model.num_layers"),
    ({"model_dim": 2 * MAX_WIDTH, "num_heads": 8}, "model.model_dim"),
    ({"model_dim": 1, "num_heads": 1}, "model.model_dim"),
    ({"mlp_mult": 1e-9}, "model.mlp_mult"), ({"mlp_mult": 1e300}, "model.mlp_mult"),
    ({"mlp_mult": 1025.0}, "model.mlp_mult"),  # 1025 * 64 > 65,536
    ({"bigram_buckets": 2**24 + 1}, "model.bigram_buckets"), ({"bigram_dim": MAX_WIDTH + 1}, "model.bigram_dim"),
    ({"ve_dim": MAX_WIDTH + 1}, "model.ve_dim"), ({"num_kv_heads": 0}, "model.num_kv_heads"),
    ({"rope_dims": 2}, "model.rope_dims"), ({"leaky_slope": 2.0}, "model.leaky_slope"),
    ({"logit_softcap": 1e5}, "model.logit_softcap"), ({"rope_base": 0.5}, "model.rope_base"),
    ({"tied_embed_init_std": -1.0}, "model.tied_embed_init_std"),
])
def test_per_dimension_bounds_hold_even_without_size_limits(changes, key):
    base = dict(num_layers=2, model_dim=64, num_heads=4, num_kv_heads=2, rope_dims=8, rope_ref_len=32, xsa_last_n=2,
                ve_layers=(1,), bigram_buckets=64, bigram_dim=16, ve_dim=16)
    for limits in (True, False):
        with pytest.raises(ConfigError, match=f"^{key}: "):
            ModelConfig(**(base | changes), size_limits=limits)


# ------------------------------------------------------------------------------------------ the fuzz

SET_SPELLINGS = ["nan", "NaN", "-nan", "inf", "-inf", "+inf", "Infinity", "-Infinity", "1e999", "-1e999", "1_e400"]
JSON_FLOATS = ["NaN", "Infinity", "-Infinity", "1e999", "-1e999", '"0.5"', "true", "null", "[1.0]", '{"v": 1}']


def json_invalid(t, cur) -> list[str]:
    """Raw JSON tokens a strict reading of annotation `t` must refuse."""
    origin = typing.get_origin(t)
    if origin is Literal:
        return ['"evil"', "1", "null"]
    if origin is tuple:
        elem = typing.get_args(t)[0]
        return {int: ["[0.5]", '"1"', "[true]"], str: ['"sliding"', "[1]"], float: ["[NaN, 0.0]", '"0"']}[elem]
    if t is bool:
        return ["1", '"true"', "null"]
    if t is int:
        return [f"{cur}.0", f'"{cur}"', "true", "null", f"{cur}.5"]
    if t is float:
        return JSON_FLOATS
    if t is str:
        return ["1", "null", '["a"]']
    raise AssertionError(t)


def test_config_float_fuzz(tmp_path):
    flat = flatten(tiny())
    names, cases, mentions, counts = [], [], [], {"--set non-finite": 0, "config.json ill-typed": 0}
    for key in FLOAT_KEYS:
        is_tuple = typing.get_origin(known_keys()[key]) is tuple
        for s in SET_SPELLINGS:
            names.append(f"--set {key}={s}")
            cases.append(["config", "show", "--preset", "tiny", "--set", f"{key}={'0,' if is_tuple else ''}{s}"])
            mentions.append((key, f"--set {key}"))
            counts["--set non-finite"] += 1
    for key, t in known_keys().items():
        for i, token in enumerate(json_invalid(t, flat[key])):
            run = run_dir_with(tmp_path, f"{key}-{i}", key, token)
            names.append(f"config.json {key}={token}")
            cases.append(["budget", "--run-dir", str(run), "--code-bytes", "0"])
            mentions.append((key, str(run / "config.json")))
            counts["config.json ill-typed"] += 1
    results = run_many(cases, seconds_each=30)
    assert broken_promises(names, mentions, results, seconds=5) == []
    assert max(r.max_rss_mib for r in results) < 1024, "the batch child grew beyond 1 GiB"
    print(f"config fuzz: {len(cases)} inputs ({counts}), all refused with one line naming the key")

