"""Command-line pieces shared by the verbs: config arguments, --device / --json, exit codes, usage errors."""

from __future__ import annotations

import argparse
import os

from pgolf.config import ConfigError, RunConfig, parse_set
from pgolf.config.overrides import Override
from pgolf.presets import resolve

# Exit codes: 0 ok, 1 a check failed or a run failed, 2 usage / configuration error.
EXIT_OK = 0
EXIT_FAIL = 1
EXIT_USAGE = 2
DEVICES = ("auto", "cpu", "cuda")


def usage(msg: str) -> ConfigError:
    """A usage error (exit code 2), raised by a verb."""
    return ConfigError(msg)


def add_config_args(p: argparse.ArgumentParser, preset_default: str = "record") -> None:
    p.add_argument("--preset", default=preset_default, help=f"preset name (default {preset_default})")
    add_sets(p, "override a config key, e.g. --set train.iterations=100 (repeatable)")
    p.add_argument("--seed", type=int, default=None, help="shortcut for --set seed=N")


def add_sets(p: argparse.ArgumentParser, help_text: str) -> None:
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help=help_text)


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", choices=DEVICES)


def add_json(p: argparse.ArgumentParser, help_text: str | None = None) -> None:
    p.add_argument("--json", action="store_true", help=help_text)


def resolve_args(args) -> tuple[RunConfig, list[Override]]:
    """--preset / --set / --seed and the process environment -> (config, the overrides applied)."""
    return resolve(args.preset, args.sets, os.environ, seed=args.seed)


def prefixed_sets(raw: list[str], verb: str, prefixes: tuple[str, ...]) -> list[Override]:
    """--set items of a verb that accepts only keys under `prefixes` (e.g. quantize: quant.*)."""
    sets = parse_set(raw)
    bad = [o.key for o in sets if not o.key.startswith(prefixes)]
    if bad:
        allowed = " and ".join(f"{p}*" for p in prefixes)
        raise usage(f"{verb} accepts --set for {allowed} keys only, got {', '.join(bad)}")
    return sets


def preset_given(raw: list[str]) -> bool:
    """Whether the command line names --preset (as `--preset X` or `--preset=X`)."""
    return any(a == "--preset" or a.startswith("--preset=") for a in raw)
