"""The record path in one process: train -> quantize -> score the artifact read back from disk.

`run_record` is the single entry point of `pgolf run` and of the bundled `train_gpt.py`. Order matters
for the rules: the artifact is written (and the size verdict logged) before any scoring; scoring always
loads the artifact from its file (`load_artifact`), never the in-memory weights, so what is scored is
exactly what ships. Results go to `results.json` and one greppable line per mode:

    final_<mode> val_loss:<nats> val_bpb:<bpb> eval_time:<ms>ms [<compliance label>]

One `RunLogger` serves every stage of the run (the stages share its timings). results.json records the
model_final.pt and the artifact it scored (sha256); `--resume` reuses a stage only when its provenance
matches the run (docs/DESIGN.md#resume) and refuses one made from other weights than the run's.
"""

from __future__ import annotations

import time
from pathlib import Path

from pgolf.config import ConfigError, RunConfig, config_hash
from pgolf.quant.artifact import load_artifact
from pgolf.quant.stage import check_run_artifact, quantize_run
from pgolf.rundir import (
    ARTIFACT,
    AUDIT,
    CKPT_DIR,
    LAST_CKPT,
    MODEL_FINAL,
    QUANT_SUMMARY,
    RESULTS,
    TRAIN_SUMMARY,
    Results,
    Run,
    RunLogger,
)
from pgolf.runtime import DistEnv, score_precision
from pgolf.scoring.evaluate import evaluate
from pgolf.telemetry import PhaseTimer
from pgolf.train.loop import TrainResult, train


def score_artifact(cfg: RunConfig, env: DistEnv, run_dir: str | Path, *, progress: bool = True,
                   log: RunLogger | None = None, modes: tuple[str, ...] | None = None) -> dict:
    """Score `<run_dir>/artifact.pgolf` with the configured modes; -> {mode: result}."""
    run_dir = Path(run_dir)
    model = load_artifact(run_dir / ARTIFACT, env.device)
    prec = score_precision(cfg, env)
    if log is not None:
        log.log(f"score_precision:{prec.name} ({prec.reason})")
    with PhaseTimer(log, "score", env.device):
        res = evaluate(model, cfg, env, modes=modes or cfg.score.modes, autocast_dtype=prec.dtype,
                       max_val_tokens=cfg.score.max_val_tokens, progress=progress)
    for mode, r in res.items():
        r["precision_reason"] = prec.reason
        if cfg.score.max_val_tokens:
            r["partial"] = f"first {cfg.score.max_val_tokens} validation tokens only: not a challenge score"
        if log is not None:
            note = f"; {r['partial']}" if "partial" in r else ""
            log.log(f"final_{mode} val_loss:{r['val_loss']:.8f} val_bpb:{r['val_bpb']:.8f} "
                    f"eval_time:{r['seconds'] * 1000:.0f}ms [{r['label']}{note}]")
    return res


def run_record(cfg: RunConfig, env: DistEnv, run_dir: str | Path, *, code_bytes: int = 0, progress: bool = True,
               echo: bool = True, resume: bool = False) -> dict:
    """Train, quantize and score one seed; -> the results dict (also `<run_dir>/results.json`).

    code_bytes: the size of the shipped code (the bundled train_gpt.py), counted with the artifact.
    resume: skip the stages this run directory already finished for the same config (hash-checked):
    a complete results.json is returned as is; finished training (model_final.pt + train_summary.json)
    is not redone; a written artifact (+ quant_summary.json) is not requantized. A killed training run
    continues from its checkpoint.
    """
    if cfg.score.max_val_tokens == 1:
        raise ConfigError("score.max_val_tokens must be 0 (the whole stream) or >= 2 (a prefix holds n - 1 targets)")
    run = Run(run_dir)
    if resume and run.stage_done(cfg, RESULTS):
        done = run.results(required=True)  # refuses results of other weights or another artifact
        if done.artifact_sha256 is not None:  # older results record no artifact: re-scored
            return done.to_json()
    t0 = time.perf_counter()
    log = RunLogger(run.path, env.is_main, echo=echo)
    if resume and run.stage_done(cfg, MODEL_FINAL, TRAIN_SUMMARY):
        ts = run.train_summary(required=True)
        tr = TrainResult(run.path, ts.steps, ts.train_seconds, ts.stopped_by, ts.tokens_per_second,
                         ts.step_avg_ms, ts.final_val)
    else:
        ckpt = resume and run.stage_done(cfg, f"{CKPT_DIR}/{LAST_CKPT}")
        tr = train(cfg, env, run.path, resume=ckpt, progress=progress, echo=echo, log=log)
    if resume and run.stage_done(cfg, ARTIFACT, QUANT_SUMMARY) and quantized_with(run, cfg):
        q = run.quant_summary(required=True).to_json()
    else:
        q = quantize_run(run.path, env, code_bytes=code_bytes, progress=progress, echo=echo, cfg=cfg, log=log)
    weights, artifact = run.sha256(MODEL_FINAL), run.sha256(ARTIFACT)  # what is scored, before it is read
    modes = score_artifact(cfg, env, run.path, progress=progress, log=log)
    results = Results(
        preset=cfg.preset, seed=cfg.seed, config_hash=config_hash(cfg), world_size=env.world_size,
        steps=tr.steps, train_seconds=tr.train_seconds, stopped_by=tr.stopped_by,
        artifact_bytes=q["artifact_bytes"], code_bytes=code_bytes, total_bytes=q["total_bytes"],
        within_limit=q["within_limit"], compressor=q["compressor"], modes=modes,
        compliant=(all(r.get("compliant", False) for r in modes.values()) and q["within_limit"]
                   and not cfg.score.max_val_tokens),
        wall_seconds=time.perf_counter() - t0, weights_sha256=weights, artifact_sha256=artifact,
    ).to_json()
    log.remove((AUDIT,), "it audited the previous results")
    log.write_json(RESULTS, results)
    return results


def quantized_with(run: Run, cfg: RunConfig) -> bool:
    """The run's artifact was made by this config from the run's model_final.pt (checked: one made from other
    weights is refused); an artifact of other quant settings, or of a pgolf that recorded none, is redone."""
    q = run.quant_summary(required=True)
    check_run_artifact(run)
    return q.config_hash == config_hash(cfg) and q.artifact_sha256 is not None
