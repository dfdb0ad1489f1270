"""Tiny-preset configs and CLI runs on the session's tiny dataset, and fake finished run directories."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from pgolf.config import config_hash, to_dict
from pgolf.presets import resolve
from pgolf.rundir import Results, TrainSummary


def tiny_cfg(tiny_data, *sets):
    cfg, _ = resolve("tiny", [f"data.path={tiny_data['dataset_dir']}", f"data.tokenizer_path={tiny_data['tokenizer']}",
                              *sets], env={})
    return cfg


def cli_sets(tiny_data, *sets):
    out = []
    for s in (f"data.path={tiny_data['dataset_dir']}", f"data.tokenizer_path={tiny_data['tokenizer']}", *sets):
        out += ["--set", s]
    return out


def run_cli(args, **kw):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGOLF_")}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([sys.executable, "-m", "pgolf", *args], capture_output=True, text=True, env=env, **kw)


def final_weights(run_dir):
    return torch.load(Path(run_dir) / "model_final.pt", weights_only=True)


def make_run(root: Path, seed: int, losses: dict[str, float], *, bpb_ratio: float = 1.5, steps: int = 100,
             train_seconds: float = 50.0, total_bytes: int = 15_900_000, code_bytes: int = 100_000,
             eval_seconds: float = 120.0, partial: bool = False, audit=None, sets: tuple[str, ...] = (),
             n_train: int = 20, n_val: int = 4, labels: dict[str, str] | None = None, gpu: str | None = None,
             world_size: int = 1, cpu_count: int = 2) -> Path:
    """A fake finished run directory; `losses` maps mode -> val_loss (nats), in config order.

    train_summary.json and results.json are built from `pgolf.rundir`'s records, as `train.loop` and
    `pipeline.run_record` write them; env.json has the keys of `telemetry.environment_fingerprint` that
    the tools read. No quant_summary.json (the report treats it as optional)."""
    d = root / f"seed{seed}"
    d.mkdir(parents=True)
    modes = list(losses)
    cfg, _ = resolve("tiny", [f"score.modes={','.join(modes)}", *sets], {}, seed=seed)
    (d / "config.json").write_text(json.dumps({"config": to_dict(cfg), "config_hash": config_hash(cfg)}))
    mres = {}
    for m, loss in losses.items():
        label = (labels or {}).get(m, "compliant")
        r = {"val_loss": loss, "val_bpb": loss / bpb_ratio, "targets": 1000, "bytes": 2000,
             "compliant": label == "compliant", "label": label, "seconds": eval_seconds / len(modes),
             "eval_seconds_total": eval_seconds}
        if partial:
            r["partial"] = "first 8192 validation tokens only: not a challenge score"
        mres[m] = r
    within = total_bytes <= 16_000_000
    results = Results(preset="tiny", seed=seed, config_hash=config_hash(cfg), world_size=world_size, steps=steps,
                      train_seconds=train_seconds, stopped_by="iterations", artifact_bytes=total_bytes - code_bytes,
                      code_bytes=code_bytes, total_bytes=total_bytes, within_limit=within, compressor="brotli",
                      modes=mres, compliant=within and not partial, wall_seconds=train_seconds + eval_seconds)
    (d / "results.json").write_text(json.dumps(results.to_json()))

    def val(loss: float) -> dict:
        return {"val_loss": loss, "val_bpb": loss / bpb_ratio, "val_targets": 1000, "val_bytes": 2000}

    final_ema, final_raw = val(5.0 - n_val * 0.3), val(3.9)
    summary = TrainSummary(steps=steps, train_seconds=train_seconds, stopped_by="iterations",
                           step_avg_ms=train_seconds * 1000 / steps,
                           tokens_per_second=cfg.train.batch_tokens * steps / train_seconds, final_val=final_ema,
                           final_val_raw=final_raw, ema=True, world_size=world_size, grad_accum=1,
                           calib_seconds=0.0, charged_seconds=train_seconds)
    (d / "train_summary.json").write_text(json.dumps(summary.to_json()))
    env = {"torch": "2.13.0+cpu", "cuda": None, "cpu_count": cpu_count, "world_size": world_size, "device": "cpu"}
    if gpu:
        env |= {"gpu": gpu, "gpu_count": world_size, "cuda": "12.8", "device": "cuda:0"}
    (d / "env.json").write_text(json.dumps(env))
    lines = []
    for i in range(1, n_train + 1):
        step = max(1, round(i * steps / n_train))
        lines.append({"kind": "train", "step": step, "train_loss": 6.0 - 3.0 * i / n_train + 0.01 * (seed % 3),
                      "train_time_s": step * train_seconds / steps, "step_avg_ms": train_seconds * 1000 / steps,
                      "lr_mult": 1.0})
    for i in range(1, n_val + 1):
        step = round(i * steps / n_val)
        tag = "periodic" if i < n_val else "final_ema"
        lines.append({"kind": "val", "tag": tag, "step": step, "train_time_s": step * train_seconds / steps,
                      **val(5.0 - i * 0.3)})
    lines.append({"kind": "val", "tag": "final_raw", "step": steps, "train_time_s": train_seconds, **final_raw})
    (d / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    if audit is not None:
        (d / "audit.json").write_text(json.dumps(audit))
    return d
