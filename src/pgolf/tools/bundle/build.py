"""A bundle for a config: its closure, overrides and both forms of train_gpt.py; the code bytes it counts."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pgolf
from pgolf.config import Override, RunConfig, apply_overrides, config_hash, diff
from pgolf.presets import get_preset
from pgolf.rundir import load_config
from pgolf.tools.bundle.closure import ModuleInfo, runtime_closure
from pgolf.tools.bundle.template import ENTRY, compress_source, render


@dataclass
class Bundle:
    cfg: RunConfig
    preset: str
    overrides: dict[str, Any]
    modules: dict[str, ModuleInfo]
    readable: str
    compressed: str
    stripped: bool = True
    """The modules are embedded without docstrings and comments (False: verbatim, `--keep-docs`)."""

    @property
    def source_form(self) -> str:
        return "stripped" if self.stripped else "verbatim"

    @property
    def sizes(self) -> dict[str, int]:
        return {"readable": len(self.readable.encode("utf-8")), "compressed": len(self.compressed.encode("utf-8"))}

    def text(self, compress: bool | None = None) -> str:
        """compress None = whichever is smaller."""
        if compress is None:
            compress = self.sizes["compressed"] < self.sizes["readable"]
        return self.compressed if compress else self.readable


def bundle_overrides(cfg: RunConfig) -> tuple[str, dict[str, Any]]:
    """(preset, {dotted key: value}) such that the preset plus these overrides rebuilds `cfg` (run_id
    aside: a label, not a setting, and not part of config_hash)."""
    base = get_preset(cfg.preset)
    over = {k: new for k, (_, new) in diff(cfg, base).items() if k not in ("run_id", "preset")}
    rebuilt = apply_overrides(base, [Override(k, v, "bundle") for k, v in over.items()])
    if config_hash(rebuilt) != config_hash(cfg):  # internal invariant of diff/apply_overrides
        raise AssertionError("bundled preset + overrides do not reproduce the config")
    return cfg.preset, over


def build_bundle(cfg: RunConfig, root: Path | None = None, *, strip: bool = True) -> Bundle:
    """Everything of the emitted train_gpt.py for config `cfg` (both forms); `strip` False embeds the
    modules verbatim (docstrings and comments kept)."""
    preset, over = bundle_overrides(cfg)
    modules = runtime_closure(ENTRY, root)
    readable = render(modules, preset, over, pgolf.__version__, strip=strip)
    return Bundle(cfg, preset, over, modules, readable, compress_source(readable), stripped=strip)


def code_bytes(path: str | os.PathLike) -> int:
    """Counted code bytes of a bundle: the size of the file itself."""
    return os.path.getsize(path)


def config_code_bytes(cfg: RunConfig, *, strip: bool = True) -> int:
    """Code bytes the submission would count for `cfg`: the size of the train_gpt.py emitted for it
    (the smaller form, as `pgolf bundle` writes by default)."""
    return len(build_bundle(cfg, strip=strip).text().encode("utf-8"))


def run_code_bytes(run_dir: str | os.PathLike) -> int:
    """config_code_bytes of a run directory's config."""
    return config_code_bytes(load_config(run_dir))
