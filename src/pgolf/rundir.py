"""The run-directory contract: every file name, who writes it, how it is read back (docs/DESIGN.md#run-directory).

A run directory is the only way the stages (train -> quantize -> score) and the tools (audit, report,
bundle, budget) talk to each other. This module owns it:

| file                 | written by        | holds                                                        |
|----------------------|-------------------|--------------------------------------------------------------|
| config.json          | train             | {"config": tree, "config_hash": sha256}                       |
| env.json             | train             | versions, device, threads, git sha, attention, precision     |
| log.txt              | every stage       | challenge-style key:value lines                              |
| metrics.jsonl        | train             | one JSON record per logged step / validation                 |
| timings.json         | every stage       | seconds per phase (accumulated across resumes)               |
| reads.json           | train             | which shards were read and for what                          |
| ckpt/last.pt         | train             | resumable state (weights_only torch.save)                     |
| model_final.pt       | train             | the final (EMA) float weights                                |
| hessians.pt          | train (optional)  | training-batch GPTQ Hessians (quant.calib_source=train)      |
| train_summary.json   | train             | `TrainSummary`                                               |
| artifact.pgolf       | quantize          | the compressed model (pgolf.quant.container)                 |
| quant_summary.json   | quantize          | `QuantSummary`                                               |
| results.json         | score (pipeline)  | `Results`                                                    |
| audit.json           | tools.audit       | the audit report ({"status": PASS|FAIL, "checks": [...]})     |

Writes go through `RunLogger` (rank 0, atomic with fsync: `pgolf.files`); reads go through `Run`,
which validates each record once and turns every problem into one `RunDirError` line naming the file.
A stage is reused (`pgolf run --resume`) only if its files exist and config.json carries the same
config hash (`Run.stage_done`).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from pgolf.config import SCORE_MODES, ConfigError, RunConfig, config_hash, from_dict, to_dict
from pgolf.errors import PgolfError
from pgolf.files import atomic_write_json
from pgolf.model.build import build_gpt
from pgolf.model.gpt import GPT
from pgolf.runtime import DistEnv

CONFIG = "config.json"
ENV = "env.json"
LOG = "log.txt"
METRICS = "metrics.jsonl"
TIMINGS = "timings.json"
READS = "reads.json"
CKPT_DIR = "ckpt"
LAST_CKPT = "last.pt"
MODEL_FINAL = "model_final.pt"
HESSIANS = "hessians.pt"
TRAIN_SUMMARY = "train_summary.json"
ARTIFACT = "artifact.pgolf"
QUANT_SUMMARY = "quant_summary.json"
RESULTS = "results.json"
AUDIT = "audit.json"
DEFAULT_ROOT = "runs"


class RunDirError(PgolfError, ValueError):
    """A run directory (or one of its files) that cannot be used as it is; one line naming the file."""


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


class RunLogger:
    """Rank-0 writer of a run directory: log.txt (human, greppable key:value lines), metrics.jsonl
    (machine), JSON side files (atomic), and phase timings. On other ranks every method is a no-op.
    `pgolf run` creates one and hands it to every stage, so the stages share its timings in memory.
    """

    def __init__(self, run_dir: str | Path, is_main: bool = True, echo: bool = True):
        self.run_dir = Path(run_dir)
        self.is_main = is_main
        self.echo = echo
        self.timings: dict[str, float] = {}
        if is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if (self.run_dir / TIMINGS).is_file():  # a resumed run keeps the phases already measured
                self.timings = read_json(self.run_dir / TIMINGS, "phase timings")

    def log(self, line: str) -> None:
        if not self.is_main:
            return
        if self.echo:
            print(line, flush=True)
        with (self.run_dir / LOG).open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")

    def metric(self, **fields_) -> None:
        if not self.is_main:
            return
        with (self.run_dir / METRICS).open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(fields_, sort_keys=True) + "\n")

    def write_json(self, name: str, obj: Any) -> None:
        """Write run_dir/name atomically (temp file, fsync, rename) on rank 0."""
        if not self.is_main:
            return
        atomic_write_json(self.run_dir / name, obj)

    def timing(self, phase: str, seconds: float) -> None:
        """Record a named phase's duration (seconds) in timings.json (accumulates across resumes)."""
        self.timings[phase] = self.timings.get(phase, 0.0) + float(seconds)
        self.write_json(TIMINGS, self.timings)

    def set_timing(self, phase: str, seconds: float) -> None:
        self.timings[phase] = float(seconds)
        self.write_json(TIMINGS, self.timings)


def write_config(log: RunLogger, cfg: RunConfig) -> None:
    log.write_json(CONFIG, {"config": to_dict(cfg), "config_hash": config_hash(cfg)})


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def read_json(path: Path, what: str, required: bool = True) -> Any:
    """The parsed JSON of `path`; None when absent and not required. One-line RunDirError otherwise."""
    if not path.is_file():
        if required:
            raise RunDirError(f"{path}: missing ({what})")
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RunDirError(f"{path}: not valid JSON ({e.__class__.__name__}: {e})") from None
    except OSError as e:
        raise RunDirError(f"{path}: unreadable ({e.strerror or type(e).__name__})") from None


def read_jsonl(path: Path) -> tuple[list[dict], int]:
    """A .jsonl file -> (its dict records, number of unreadable lines skipped, e.g. a torn last line)."""
    if not path.is_file():
        return [], 0
    out, bad = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(rec, dict):
            out.append(rec)
        else:
            bad += 1
    return out, bad


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


class _Record:
    """A typed JSON record: the dataclass fields are its keys, in file order."""

    REQUIRED_NUMBERS: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Any, path: Path):
        if not isinstance(d, dict):
            raise RunDirError(f"{path}: expected a JSON object")
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in d]
        if missing:
            raise RunDirError(f"{path}: missing key(s) {', '.join(missing)}")
        bad = [k for k in cls.REQUIRED_NUMBERS if not _number(d[k])]
        if bad:
            raise RunDirError(f"{path}: {', '.join(bad)} must be numbers")
        return cls(**{n: d[n] for n in names})


@dataclass(frozen=True)
class TrainSummary(_Record):
    steps: int
    train_seconds: float
    stopped_by: str
    step_avg_ms: float
    tokens_per_second: float
    final_val: dict
    final_val_raw: dict
    ema: bool
    world_size: int
    grad_accum: int
    calib_seconds: float
    charged_seconds: float
    REQUIRED_NUMBERS = ("steps", "train_seconds", "charged_seconds")


@dataclass(frozen=True)
class QuantSummary(_Record):
    artifact: str
    artifact_bytes: int
    code_bytes: int
    total_bytes: int
    limit_bytes: int
    within_limit: bool
    method: str
    matrix_bits: int
    embed_bits: int
    clip: str
    layout: str
    compressor: str
    compressed_sizes: dict
    raw_payload_bytes: int
    entropy_bytes: dict
    payload_over_entropy: float | None
    calibration: dict
    pruning: dict
    quantize_seconds: float
    serialize_seconds: float
    REQUIRED_NUMBERS = ("artifact_bytes", "code_bytes", "total_bytes", "limit_bytes")


@dataclass(frozen=True)
class Results(_Record):
    preset: str
    seed: int
    config_hash: str
    world_size: int
    steps: int
    train_seconds: float
    stopped_by: str
    artifact_bytes: int
    code_bytes: int
    total_bytes: int
    within_limit: bool
    compressor: str
    modes: dict
    compliant: bool
    wall_seconds: float
    REQUIRED_NUMBERS = ("steps", "total_bytes", "artifact_bytes", "code_bytes")

    @classmethod
    def from_json(cls, d: Any, path: Path) -> Results:
        r = super().from_json(d, path)
        if not isinstance(r.modes, dict) or not r.modes:
            raise RunDirError(f"{path}: no scored modes ('modes' is missing or empty)")
        unknown = [m for m in r.modes if m not in SCORE_MODES]
        if unknown:
            raise RunDirError(f"{path}: unknown mode(s) {unknown}")
        for m, v in r.modes.items():
            if not isinstance(v, dict) or not all(_number(v.get(k)) for k in ("val_loss", "val_bpb")):
                raise RunDirError(f"{path}: mode {m!r} has no numeric val_loss and val_bpb")
            if not all(math.isfinite(v[k]) for k in ("val_loss", "val_bpb")):
                raise RunDirError(f"{path}: mode {m!r} has a non-finite val_loss or val_bpb")
        return r


def load_config(run_dir: str | Path) -> RunConfig:
    """A run directory's config.json -> the config tree (validated like any other)."""
    p = Path(run_dir) / CONFIG
    if not p.is_file():
        raise FileNotFoundError(f"{p}: not a pgolf run directory (no {CONFIG})")
    d = read_json(p, "run config")
    if not isinstance(d, dict) or not isinstance(d.get("config"), dict):
        raise RunDirError(f"{p}: expected {{'config': {{...}}, 'config_hash': ...}}")
    try:
        return from_dict(d["config"], source=str(p))
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None


class Run:
    """One run directory, read through its contract. Every reader validates its record once."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def artifact(self) -> Path:
        return self.path / ARTIFACT

    @property
    def checkpoint(self) -> Path:
        return self.path / CKPT_DIR / LAST_CKPT

    def require_dir(self) -> Run:
        if not self.path.is_dir():
            raise FileNotFoundError(f"{self.path}: no such run directory")
        return self

    def config(self) -> RunConfig:
        return load_config(self.path)

    def config_hash(self) -> str | None:
        d = read_json(self.path / CONFIG, "run config", required=False)
        return d.get("config_hash") if isinstance(d, dict) else None

    def env(self) -> dict | None:
        return read_json(self.path / ENV, "environment", required=False)

    def timings(self) -> dict:
        return read_json(self.path / TIMINGS, "phase timings", required=False) or {}

    def reads(self) -> list | None:
        return read_json(self.path / READS, "shard reads", required=False)

    def metrics(self) -> tuple[list[dict], int]:
        return read_jsonl(self.path / METRICS)

    def train_summary(self, required: bool = False) -> TrainSummary | None:
        d = read_json(self.path / TRAIN_SUMMARY, "training summary", required)
        return None if d is None else TrainSummary.from_json(d, self.path / TRAIN_SUMMARY)

    def quant_summary(self, required: bool = False) -> QuantSummary | None:
        d = read_json(self.path / QUANT_SUMMARY, "quantization summary", required)
        return None if d is None else QuantSummary.from_json(d, self.path / QUANT_SUMMARY)

    def results(self, required: bool = False) -> Results | None:
        p = self.path / RESULTS
        if required and not p.is_file():
            raise FileNotFoundError(f"{p}: missing: the run has not been scored (run `pgolf run`)")
        d = read_json(p, "results", required)
        return None if d is None else Results.from_json(d, p)

    def audit(self) -> dict | None:
        d = read_json(self.path / AUDIT, "audit", required=False)
        if d is not None and not (isinstance(d, dict) and d.get("status") in ("PASS", "FAIL")
                                  and isinstance(d.get("checks"), list)):
            raise RunDirError(f"{self.path / AUDIT}: not an audit report (re-run `pgolf audit {self.path}`)")
        return d

    def stage_done(self, cfg: RunConfig, *names: str) -> bool:
        """Every named file exists and config.json has this config's hash (a stage of another config is
        never reused)."""
        if not (self.path / CONFIG).is_file() or not all((self.path / n).is_file() for n in names):
            return False
        return self.config_hash() == config_hash(cfg)


def load_final_weights(run_dir: str | Path, cfg: RunConfig, device: torch.device | str = "cpu") -> GPT:
    """The trained (EMA) float weights of a run directory (model_final.pt) in a fresh GPT, float32."""
    p = Path(run_dir) / MODEL_FINAL
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no final weights (did training finish?)")
    model = build_gpt(cfg.model, cfg.seed, torch.device("cpu"))
    model.load_state_dict(torch.load(p, map_location="cpu", weights_only=True))
    return model.to(device)


def default_run_dir(cfg: RunConfig, env: DistEnv, root: str | Path = DEFAULT_ROOT) -> Path:
    """runs/<run_id>, with run_id = cfg.run_id or <preset>_s<seed>_<UTC time>, agreed across ranks."""
    name = cfg.run_id or f"{cfg.preset}_s{cfg.seed}_{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    return Path(root) / env.broadcast_object(name)
