"""The configuration error type and the validation helper every section uses."""

from __future__ import annotations

from pgolf.errors import PgolfError


class ConfigError(PgolfError, ValueError):
    """A user-facing configuration problem; the message names the dotted key."""

    exit_code = 2


def _require(ok: bool, key: str, problem: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {problem}")
