"""The configuration error type and the validation helpers every section uses."""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from typing import Any, Literal

from pgolf.errors import PgolfError


class ConfigError(PgolfError, ValueError):
    """A user-facing configuration problem; the message names the dotted key."""

    exit_code = 2


def _require(ok: bool, key: str, problem: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {problem}")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _value_problem(v: Any, t: Any) -> str | None:
    """Why `v` is not a value of annotation `t` (None when it is). int takes an int (never a bool or a
    float such as 2.0), float takes a finite int or float (never a bool, NaN or +-inf), bool a bool,
    str a str, a Literal one of its values, tuple[X, ...] a tuple of X, a dataclass an instance of it."""
    origin = typing.get_origin(t)
    if origin is Literal:
        choices = typing.get_args(t)
        return None if isinstance(v, str) and v in choices else "expected one of " + ", ".join(map(repr, choices))
    if origin is tuple:
        elem = typing.get_args(t)[0]
        if not isinstance(v, tuple):
            return f"expected a tuple of {getattr(elem, '__name__', elem)}"
        for item in v:
            if (why := _value_problem(item, elem)) is not None:
                return f"element {item!r}: {why}"
        return None
    if t is bool:
        return None if isinstance(v, bool) else "expected a bool"
    if t is int:
        return None if isinstance(v, int) and not isinstance(v, bool) else "expected an int"
    if t is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return "expected a number"
        return None if math.isfinite(v) else "must be a finite number"
    if t is str:
        return None if isinstance(v, str) else "expected a str"
    if isinstance(t, type):
        return None if isinstance(v, t) else f"expected {t.__name__}"
    return f"unsupported field type {t!r}"


def _check_fields(section: Any, prefix: str) -> None:
    """Every field of a config section has its annotated type and every float is finite (NaN and +-inf
    pass every `>=` / range check, so they are refused here first); ConfigError names the dotted key."""
    hints = _hints(type(section))
    for f in dataclasses.fields(section):
        v = getattr(section, f.name)
        why = _value_problem(v, hints[f.name])
        if why is not None:
            raise ConfigError(f"{prefix}{f.name}: {why}, got {v!r}")
