"""Fake finished run directories for the auditor's checks, written and read through `pgolf.rundir`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pgolf.config import RunConfig, config_hash
from pgolf.rundir import (
    ARTIFACT,
    ENV,
    QUANT_SUMMARY,
    READS,
    RESULTS,
    TIMINGS,
    TRAIN_SUMMARY,
    QuantSummary,
    Results,
    RunLogger,
    TrainSummary,
    write_config,
)
from pgolf.runtime import DistEnv
from pgolf.tools.audit.context import AuditContext, ValData

CPU = {"device": "cpu", "cpu_count": 2, "world_size": 1}
H100x8 = {"device": "cuda:0", "gpu": "NVIDIA H100 80GB HBM3", "world_size": 8}
NO_VAL = ValData(np.zeros(2, dtype=np.uint16), None, None, 2)
"""Validation data for checks that do not read it (budgets, reference)."""


def write_fake_run(d: Path, cfg: RunConfig, *, art_bytes: int = 5000, code_bytes: int = 1000, train_s: float = 10.0,
                   env: dict | None = None, reads: list | None = None, calib: str | None = "selfgen") -> Path:
    """A run directory with one scored mode (sliding), a zero-filled artifact of `art_bytes` and the
    records the budgets/data/reference checks read; env / reads None: no env.json / reads.json."""
    d.mkdir(parents=True, exist_ok=True)
    for name in (ENV, READS):
        (d / name).unlink(missing_ok=True)
    log = RunLogger(d, echo=False)
    write_config(log, cfg)
    (d / ARTIFACT).write_bytes(b"\0" * art_bytes)
    total = art_bytes + code_bytes
    mode = {"val_loss": 4.0, "val_bpb": 2.5, "seconds": 3.0, "targets": 10, "bytes": 20, "compliant": True,
            "label": "compliant"}
    results = Results(preset=cfg.preset, seed=cfg.seed, config_hash=config_hash(cfg), world_size=1, steps=3,
                      train_seconds=train_s, stopped_by="iterations", artifact_bytes=art_bytes, code_bytes=code_bytes,
                      total_bytes=total, within_limit=True, compressor="brotli", modes={"sliding": mode},
                      compliant=True, wall_seconds=train_s + 3.5)
    quant = QuantSummary(artifact=ARTIFACT, artifact_bytes=art_bytes, code_bytes=code_bytes, total_bytes=total,
                         limit_bytes=cfg.budget.artifact_bytes_limit, within_limit=True, method="gptq", matrix_bits=6,
                         embed_bits=8, clip="none", layout="row", compressor="brotli", compressed_sizes={},
                         raw_payload_bytes=art_bytes, entropy_bytes={}, payload_over_entropy=None,
                         calibration={"source": calib}, pruning={}, quantize_seconds=0.1, serialize_seconds=0.1)
    train = TrainSummary(steps=3, train_seconds=train_s, stopped_by="iterations", step_avg_ms=train_s * 1000 / 3,
                         tokens_per_second=1.0, final_val={}, final_val_raw={}, ema=False, world_size=1, grad_accum=1,
                         calib_seconds=0.0, charged_seconds=train_s)
    for name, rec in ((RESULTS, results), (QUANT_SUMMARY, quant), (TRAIN_SUMMARY, train)):
        log.write_json(name, rec.to_json())
    log.write_json(TIMINGS, {"train": train_s, "score": 3.5})
    if env is not None:
        log.write_json(ENV, env)
    if reads is not None:
        log.write_json(READS, reads)
    return d


def fake_context(d: Path, cfg: RunConfig, val: ValData = NO_VAL, **kw) -> AuditContext:
    """write_fake_run, then the audit's context of it (read back through pgolf.rundir) with `val`."""
    return AuditContext.load(write_fake_run(d, cfg, **kw), DistEnv(), val=val)
