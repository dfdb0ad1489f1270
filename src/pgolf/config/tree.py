"""Generic helpers over the config tree: dicts, flat dotted keys, hashing, coercion of raw values."""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

from pgolf.config.base import ConfigError
from pgolf.config.model import ModelConfig
from pgolf.config.schema import RunConfig


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
            value = float(raw)
        else:
            try:
                value = float(str(raw).strip().replace("_", ""))
            except (ValueError, OverflowError):
                raise fail() from None
        if not math.isfinite(value):
            raise ConfigError(f"{key}: cannot use {raw!r}{where}: expected a finite number")
        return value
    if t is str:
        return str(raw)
    raise ConfigError(f"{key}: unsupported field type {t!r}")


def _json_type(t: Any) -> str:
    origin = typing.get_origin(t)
    if origin is Literal:
        return "one of " + ", ".join(json.dumps(a) for a in typing.get_args(t))
    if origin is tuple:
        return f"a JSON list of {_json_type(typing.get_args(t)[0])}"
    return {bool: "true or false", int: "a JSON integer", float: "a finite JSON number", str: "a JSON string"}.get(
        t, getattr(t, "__name__", str(t)))


def coerce_json(key: str, raw: Any, t: Any, source: str) -> Any:
    """A value parsed from JSON (a run's config.json, an artifact manifest) as annotation `t`, strictly: an
    int field takes a JSON integer (never 2.0, "2" or true), a float field a finite JSON number, a bool
    true/false, a Literal one of its strings, a tuple a JSON list of its element type. ConfigError names
    the key and the source."""
    def fail(why: str = "") -> ConfigError:
        return ConfigError(f"{key}: cannot use {raw!r} (from {source}): expected {why or _json_type(t)}")

    origin = typing.get_origin(t)
    if origin is Literal:
        if isinstance(raw, str) and raw in typing.get_args(t):
            return raw
        raise fail()
    if origin is tuple:
        if not isinstance(raw, list):
            raise fail()
        return tuple(coerce_json(key, item, typing.get_args(t)[0], source) for item in raw)
    if t is bool:
        if isinstance(raw, bool):
            return raw
        raise fail()
    if t is int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        raise fail()
    if t is float:
        if isinstance(raw, (int, float)) and not isinstance(raw, bool) and math.isfinite(raw):
            return float(raw)
        raise fail()
    if t is str:
        if isinstance(raw, str):
            return raw
        raise fail()
    raise ConfigError(f"{key}: unsupported field type {t!r}")


def unknown_key(key: str, source: str) -> ConfigError:
    keys = list(known_keys())
    near = difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(near)}?" if near else "; `pgolf config show` lists every key"
    return ConfigError(f"unknown config key {key!r} (from {source}){hint}")


def from_flat(flat: Mapping[str, Any]) -> RunConfig:
    """Build a RunConfig from {dotted key: typed value}; missing keys take the class defaults."""
    types_ = known_keys()
    for k in flat:
        if k not in types_:
            raise unknown_key(k, "dict")

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
                raise unknown_key(key, source)
            else:
                flat[key] = coerce_json(key, v, types_[key], source)

    walk(d, "")
    return from_flat(flat)


def model_from_dict(d: Any, source: str) -> ModelConfig:
    """A model section from JSON (an artifact manifest, a checkpoint): every key must be a ModelConfig field,
    every value has its field's JSON type (`coerce_json`) and the section is validated like any other
    (types, ranges, size limits); ConfigError names the key."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"model config (from {source}): expected an object, got {type(d).__name__}")
    hints = typing.get_type_hints(ModelConfig)
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"model config (from {source}): unknown key(s) {unknown}")
    return ModelConfig(**{k: coerce_json(f"model.{k}", v, hints[k], source) for k, v in d.items()})


def diff(cfg: RunConfig, base: RunConfig) -> dict[str, tuple[Any, Any]]:
    """{key: (base value, new value)} for every leaf that differs."""
    a, b = flatten(base), flatten(cfg)
    return {k: (a[k], b[k]) for k in b if a[k] != b[k]}
