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
which validates each record once (`pgolf.rundir.records`: the typed records, `read_json`) and turns every
problem into one `RunDirError` line naming the file.
A stage is reused (`pgolf run --resume`) only if its files exist and config.json carries the same
config hash (`Run.stage_done`).

Provenance: every output records what it was made from, as the config hash and sha256 of files:
train_summary.json the model_final.pt it describes; the artifact (manifest extra "source") and
quant_summary.json the model_final.pt they were made from, the summary also the artifact; results.json
model_final.pt and the artifact it scored. Readers refuse an output whose source file is now another one
(`StaleError`: one line naming the file and what to rerun); writers remove what they supersede (a fresh
training run every file of the previous run, `PER_RUN`; a model_final.pt or artifact replaced by a
different one what was made from it, `MADE_FROM`). A record written before provenance existed carries none:
there is nothing to compare, it is read as before (and `pgolf run --resume` redoes its stage).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from pgolf.config import ConfigError, RunConfig, config_hash, from_dict, to_dict
from pgolf.files import TMP_SUFFIX, append_text, atomic_write_json
from pgolf.model.build import build_gpt
from pgolf.model.gpt import GPT
from pgolf.rundir.records import (
    QuantSummary,
    Results,
    RunDirError,
    StaleError,
    TrainSummary,
    file_sha256,
    json_kind,
    number,
    read_json,
    read_jsonl,
)
from pgolf.runtime import DistEnv, load_torch_file

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
SOURCE = "source"
"""The artifact manifest's extra key recording what it was made from (`Run.weights_source`)."""
PER_RUN = (ENV, METRICS, TIMINGS, READS, f"{CKPT_DIR}/{LAST_CKPT}", MODEL_FINAL, HESSIANS, TRAIN_SUMMARY,
           ARTIFACT, QUANT_SUMMARY, RESULTS, AUDIT)
"""What a fresh training run removes from its directory before it starts (config.json is rewritten, log.txt
goes on): a previous run's files, which the new run would otherwise mix with its own."""
MADE_FROM = {MODEL_FINAL: (ARTIFACT, QUANT_SUMMARY, RESULTS, AUDIT), ARTIFACT: (RESULTS, AUDIT),
             RESULTS: (AUDIT,)}
"""file -> the outputs made from it, removed when the file is replaced by a different one."""


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
            self.timings = Run(self.run_dir).timings()  # a resumed run keeps the phases already measured

    def log(self, line: str) -> None:
        if not self.is_main:
            return
        if self.echo:
            print(line, flush=True)
        append_text(self.run_dir / LOG, line + "\n")

    def metric(self, **fields_) -> None:
        if not self.is_main:
            return
        append_text(self.run_dir / METRICS, json.dumps(fields_, sort_keys=True) + "\n")

    def remove(self, names: tuple[str, ...], why: str) -> list[str]:
        """Rank 0: delete those of `names` that exist and log one line saying so; -> the names removed."""
        gone = [n for n in names if self.is_main and (self.run_dir / n).is_file()]
        for n in gone:
            (self.run_dir / n).unlink()
        if gone:
            self.log(f"removed {', '.join(gone)} from {self.run_dir}: {why}")
        return gone

    def start_fresh(self) -> list[str]:
        """A fresh training run: remove the previous run's files (`PER_RUN`) and any temp file a killed
        write left behind (a partial checkpoint can fill the disk), and forget its timings."""
        if self.is_main:
            for n in PER_RUN:
                (self.run_dir / (n + TMP_SUFFIX)).unlink(missing_ok=True)
        self.timings = {}
        return self.remove(PER_RUN, "a fresh training run starts here (they belonged to the previous run)")

    def replaced(self, name: str, before: str | None, after: str | None) -> list[str]:
        """`name` was rewritten (sha256 before -> after): when it changed, remove what was made from it."""
        if before is None or before == after:
            return []
        return self.remove(MADE_FROM[name], f"made from the previous {name}")

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
    """One run directory, read through its contract. Every reader validates its record once, and refuses
    one made from other inputs than the run's current ones (module docstring: provenance)."""

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
        return json_kind(self.path / ENV, read_json(self.path / ENV, "environment", required=False), dict, "environment")

    def timings(self) -> dict:
        p = self.path / TIMINGS
        d = json_kind(p, read_json(p, "phase timings", required=False), dict, "phase timings") or {}
        if not all(number(v) for v in d.values()):
            raise RunDirError(f"{p}: every phase's seconds must be a number")
        return d

    def reads(self) -> list | None:
        return json_kind(self.path / READS, read_json(self.path / READS, "shard reads", required=False), list, "reads")

    def metrics(self) -> tuple[list[dict], int]:
        return read_jsonl(self.path / METRICS)

    # -------------------------------------------------------------------------------------- provenance

    def sha256(self, name: str) -> str | None:
        """sha256 of the run's file `name`, None when it does not exist."""
        p = self.path / name
        return file_sha256(p) if p.is_file() else None

    def weights_source(self, cfg: RunConfig) -> dict:
        """What an output made from model_final.pt with `cfg` records (the artifact's manifest "source")."""
        return {"config_hash": config_hash(cfg), "weights": MODEL_FINAL, "weights_sha256": self.sha256(MODEL_FINAL)}

    def check_made_from(self, name: str, source: str, recorded: Any, remedy: str) -> None:
        """`name` records the sha256 of the `source` it was made from: refuse it when `source` is now
        another file (nothing to compare when either is absent)."""
        current = self.sha256(source) if isinstance(recorded, str) else None
        if current is not None and current != recorded:
            raise StaleError(f"{self.path / name}: stale: made from another {source} (sha256 {recorded[:12]}..., "
                             f"the run's is {current[:12]}...); {remedy}")

    def check_config(self, name: str, recorded: Any, remedy: str) -> None:
        current = self.config_hash() if isinstance(recorded, str) else None
        if current is not None and current != recorded:
            raise StaleError(f"{self.path / name}: stale: made with config {recorded[:12]}..., but {CONFIG} holds "
                             f"{current[:12]}... (another run); {remedy}")

    def check_artifact_manifest(self, manifest: dict) -> None:
        """The artifact's manifest records (extra.source) the model_final.pt it was made from."""
        src = (manifest.get("extra") or {}).get(SOURCE) if isinstance(manifest, dict) else None
        if isinstance(src, dict):
            self.check_made_from(ARTIFACT, MODEL_FINAL, src.get("weights_sha256"), self.requantize)

    @property
    def requantize(self) -> str:
        return f"rerun `pgolf quantize --run-dir {self.path}`"

    @property
    def rescore(self) -> str:
        return f"re-score the run (`pgolf run --resume --run-dir {self.path}` with its config) or delete the file"

    # --------------------------------------------------------------------------------------- records

    def train_summary(self, required: bool = False) -> TrainSummary | None:
        d = read_json(self.path / TRAIN_SUMMARY, "training summary", required)
        ts = None if d is None else TrainSummary.from_json(d, self.path / TRAIN_SUMMARY)
        if ts is not None:
            retrain = f"retrain (`pgolf train --resume {self.path}` rewrites both from the checkpoint)"
            self.check_config(TRAIN_SUMMARY, ts.config_hash, retrain)
            self.check_made_from(TRAIN_SUMMARY, MODEL_FINAL, ts.weights_sha256, retrain)
        return ts

    def quant_summary(self, required: bool = False) -> QuantSummary | None:
        d = read_json(self.path / QUANT_SUMMARY, "quantization summary", required)
        q = None if d is None else QuantSummary.from_json(d, self.path / QUANT_SUMMARY)
        if q is not None:
            self.check_made_from(QUANT_SUMMARY, MODEL_FINAL, q.weights_sha256, self.requantize)
            self.check_made_from(QUANT_SUMMARY, ARTIFACT, q.artifact_sha256, self.requantize)
        return q

    def results(self, required: bool = False) -> Results | None:
        p = self.path / RESULTS
        if required and not p.is_file():
            raise FileNotFoundError(f"{p}: missing: the run has not been scored (run `pgolf run`)")
        d = read_json(p, "results", required)
        r = None if d is None else Results.from_json(d, p)
        if r is not None:
            self.check_config(RESULTS, r.config_hash, self.rescore)
            self.check_made_from(RESULTS, MODEL_FINAL, r.weights_sha256, self.rescore)
            self.check_made_from(RESULTS, ARTIFACT, r.artifact_sha256, self.rescore)
        return r

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
    """The trained (EMA) float weights of a run directory (model_final.pt) in a fresh GPT, float32; the
    file must be the one train_summary.json records and fit cfg.model (one RunDirError line otherwise)."""
    p = Path(run_dir) / MODEL_FINAL
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no final weights (did training finish?)")
    ts = read_json(Path(run_dir) / TRAIN_SUMMARY, "training summary", required=False)
    recorded = ts.get("weights_sha256") if isinstance(ts, dict) else None
    if isinstance(recorded, str) and file_sha256(p) != recorded:
        raise RunDirError(f"{p}: not the file training wrote (sha256 {file_sha256(p)[:12]}..., {TRAIN_SUMMARY} "
                          f"records {recorded[:12]}...): damaged or replaced; retrain (`pgolf train --resume {run_dir}`)")
    state = load_torch_file(p, "weights", RunDirError)
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise RunDirError(f"{p}: not a state dict (expected {{parameter name: tensor}})")
    model = build_gpt(cfg.model, cfg.seed, torch.device("cpu"))
    ref = model.state_dict()
    wrong = [k for k, v in state.items() if k in ref and v.dtype != ref[k].dtype]
    if wrong:
        raise RunDirError(f"{p}: {wrong[0]} has dtype {state[wrong[0]].dtype}, the model's is {ref[wrong[0]].dtype}")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        lines = [x.strip() for x in str(e).splitlines()[1:] if x.strip()] or [str(e)]
        raise RunDirError(f"{p}: does not fit the model of {CONFIG}: {lines[0][:200]}") from None
    return model.to(device)


def default_run_dir(cfg: RunConfig, env: DistEnv, root: str | Path = DEFAULT_ROOT) -> Path:
    """runs/<run_id>, with run_id = cfg.run_id or <preset>_s<seed>_<UTC time>, agreed across ranks."""
    name = cfg.run_id or f"{cfg.preset}_s{cfg.seed}_{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    return Path(root) / env.broadcast_object(name)
