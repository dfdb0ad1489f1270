"""What every audit check reads: one `AuditContext` per audit (docs/DESIGN.md#audit).

The context holds the finished run read once through its contract (`pgolf.rundir.Run`: config.json,
results.json, quant_summary.json, train_summary.json, timings.json, reads.json, env.json; every record
validated by its reader), the device the probes run on, and the validation stream the config points at.
What several checks share is computed on first use and then kept: the artifact's model with the byte LUTs
on the device and the autocast dtype, the per-mode probes of `causality.py` (causality, normalization,
coverage), the coverage re-scores and the prepared data's manifest. A check is a function of the context
returning a `CheckResult` (the registry is `registry.CHECKS`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from pgolf.config import ConfigError, RunConfig, to_dict
from pgolf.data.shards import ShardError, load_val_tokens
from pgolf.data.tokenizer import build_byte_luts, load_tokenizer, luts_to_torch
from pgolf.quant.artifact import load_artifact
from pgolf.quant.stage import check_run_artifact
from pgolf.rundir import CONFIG, QuantSummary, Results, Run, TrainSummary
from pgolf.runtime import DistEnv, score_precision
from pgolf.scoring.evaluate import WARM_SEGMENTS
from pgolf.tools.audit.causality import ModeProbe, probe_mode, required_tokens, run_mode, tolerance
from pgolf.tools.data.verify import VerifyError, find_layout

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"
AUTO_MIN_TOKENS = 2048
"""Default probe prefix: max(this, the mode's required_tokens), capped by the scored stream."""
FULL_PROBE_CHECKS = frozenset({"causality", "normalization"})
"""Checks that need the flips and planted runs; with neither requested the probes run the baseline only."""


@dataclass
class CheckResult:
    name: str
    status: str
    evidence: dict = field(default_factory=dict)
    message: str = ""

    def to_json(self) -> dict:
        return {"name": self.name, "status": self.status, "message": self.message, "evidence": self.evidence}


@dataclass
class ValData:
    """The validation stream the run's config points at, its tokenizer and byte LUTs."""

    stream: np.ndarray
    sp: object
    luts: object
    scored_len: int  # tokens the run's results cover (score.max_val_tokens prefix, or all)


def load_val(cfg: RunConfig) -> ValData:
    if not Path(cfg.data.tokenizer_path).is_file():
        raise FileNotFoundError(f"{cfg.data.tokenizer_path}: tokenizer not found (config.json data.tokenizer_path)")
    try:
        stream = np.asarray(load_val_tokens(cfg.data.path, cfg.model.vocab_size))
    except ShardError as exc:
        raise FileNotFoundError(f"{cfg.data.path}: validation shards unreadable (config.json data.path): {exc}") from None
    sp = load_tokenizer(cfg.data.tokenizer_path)
    n = len(stream)
    scored = min(n, cfg.score.max_val_tokens) if cfg.score.max_val_tokens else n
    return ValData(stream, sp, build_byte_luts(sp, cfg.model.vocab_size), scored)


def probe_prefix(mode: str, cfg: RunConfig, scored_len: int, max_val_tokens: int | None) -> int:
    if max_val_tokens:
        return min(scored_len, max_val_tokens)
    return min(scored_len, max(required_tokens(mode, cfg), AUTO_MIN_TOKENS))


@dataclass
class AuditContext:
    """One finished run, the device and the validation data, plus what the checks share (lazily).

    run_env is the run's env.json (where it was measured); env is the audit's own device (DistEnv).
    checks: the checks this audit runs (the probes run the baseline only when no check needs more).
    """

    run: Run
    cfg: RunConfig
    results: Results
    quant: QuantSummary | None
    train: TrainSummary | None
    timings: dict
    reads: list | None
    run_env: dict | None
    env: DistEnv
    val: ValData
    checks: tuple[str, ...] = ()
    max_val_tokens: int | None = None
    log: Callable[[str], None] | None = None
    _probes: dict[str, ModeProbe] | None = field(default=None, init=False, repr=False)

    @classmethod
    def load(cls, run_dir: str | Path, env: DistEnv, *, checks: Iterable[str] = (), max_val_tokens: int | None = None,
             log: Callable[[str], None] | None = None, val: ValData | None = None) -> AuditContext:
        """Read a finished run directory (one-line errors from pgolf.rundir, which also refuses results and
        summaries made from other weights or another artifact than the run's); val: else the config's data."""
        run = Run(run_dir).require_dir()
        cfg = run.config()
        results = run.results(required=True)
        if not run.artifact.is_file():
            raise FileNotFoundError(f"{run.artifact}: not found (the run has no artifact; run `pgolf quantize`)")
        quant, train, timings, reads, run_env = (run.quant_summary(), run.train_summary(), run.timings(),
                                                 run.reads(), run.env())
        return cls(run, cfg, results, quant, train, timings, reads, run_env, env,
                   load_val(cfg) if val is None else val, tuple(checks), max_val_tokens, log)

    # ------------------------------------------------------------------------------------ the records

    @property
    def modes(self) -> list[str]:
        return list(self.results.modes)

    def mode_result(self, mode: str) -> dict:
        return self.results.modes[mode]

    def run_warm_segments(self, mode: str) -> int:
        return self.mode_result(mode).get("settings", {}).get("warm_segments", WARM_SEGMENTS)

    def prefix(self, mode: str) -> int:
        """The probe prefix (tokens) of `mode`."""
        return probe_prefix(mode, self.cfg, self.val.scored_len, self.max_val_tokens)

    @property
    def device(self) -> torch.device:
        return self.env.device

    # ------------------------------------------------------------------------- shared, on first use

    @cached_property
    def model(self) -> torch.nn.Module:
        """The artifact's model on the device; it must have been made from the run's model_final.pt and its
        config must be the run's."""
        check_run_artifact(self.run)
        model = load_artifact(self.run.artifact, self.device)
        if to_dict(model.cfg) != to_dict(self.cfg.model):
            raise ConfigError(f"{self.run.artifact}: the artifact's model config differs from {self.run.file(CONFIG)}")
        return model

    @cached_property
    def luts_t(self) -> dict:
        return luts_to_torch(self.val.luts, self.device)

    @cached_property
    def autocast_dtype(self) -> torch.dtype | None:
        """The precision the run was scored in (results.json records it per mode), so that re-scoring on
        another machine reproduces it; runs that predate the record: score.precision decided here."""
        recorded = {r.get("precision") for r in self.results.modes.values()} - {None}
        if len(recorded) == 1:
            return torch.bfloat16 if recorded.pop() == "bf16-autocast" else None
        return score_precision(self.cfg, self.env).dtype

    @property
    def probes(self) -> dict[str, ModeProbe]:
        """{mode: ModeProbe} for every mode the run reported, each on its probe prefix."""
        if self._probes is None:
            self._probes = {mode: self._probe(mode) for mode in self.modes}
        return self._probes

    def probe_prefix_tokens(self) -> dict[str, int]:
        """{mode: probe prefix} of the probes that ran ({} when no check needed them)."""
        return {m: p.prefix_tokens for m, p in (self._probes or {}).items()}

    def _probe(self, mode: str) -> ModeProbe:
        P, ws = self.prefix(mode), self.run_warm_segments(mode)
        model, luts_t, amp = self.model, self.luts_t, self.autocast_dtype
        try:
            return probe_mode(model, self.cfg, self.env, mode, self.val.stream[:P], luts_t, autocast_dtype=amp,
                              run_warm_segments=ws, log=self.log,
                              baseline_only=not FULL_PROBE_CHECKS & set(self.checks))
        except RuntimeError as exc:  # evaluate() refuses a mode that misses or repeats targets
            return ModeProbe(mode, P, tolerance(self.device), ws, ws, {}, np.zeros(0),
                             problems=[f"{mode}: evaluation on the {P}-token prefix failed: {exc}"])

    @cached_property
    def rescored(self) -> dict[str, dict]:
        """{mode: evaluate() result on the whole scored stream with the run's own warm-start segments}, for
        the modes whose probe covered the whole stream with other segments (the others: their baseline)."""
        out = {}
        for mode, p in self.probes.items():
            if p.baseline and p.prefix_tokens == self.val.scored_len and p.warm_segments != p.run_warm_segments:
                out[mode] = run_mode(self.model, self.cfg, self.env, mode, self.val.stream[:p.prefix_tokens],
                                     self.luts_t, autocast_dtype=self.autocast_dtype,
                                     warm_segments=p.run_warm_segments).result
        return out

    @cached_property
    def manifest(self) -> dict | None:
        """The prepared data's manifest.json, or None (no manifest, or no recognizable data layout)."""
        try:
            return find_layout(self.cfg.data.path).manifest
        except VerifyError:
            return None
