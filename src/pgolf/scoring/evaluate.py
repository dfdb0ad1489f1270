"""Evaluate a model on the validation stream with the configured modes; one result object per mode.

Modes built so far: `plain` (non-overlapping windows, every target) and `sliding` (window
score.seq_len, stride score.sliding.stride). Results carry loss (nats/token), BPB, counts, seconds
and a compliance label.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from pgolf.config import RunConfig
from pgolf.data.shards import list_shards, load_val_tokens
from pgolf.data.tokenizer import build_byte_luts, load_tokenizer, luts_to_torch
from pgolf.runtime import DistEnv
from pgolf.scoring.plan import plain_plan, sliding_plan
from pgolf.scoring.sliding import score_windows
from pgolf.telemetry import Progress

BUILT_MODES = ("plain", "sliding")


def evaluate(model: torch.nn.Module, cfg: RunConfig, env: DistEnv, *, modes: tuple[str, ...] | None = None,
             max_val_tokens: int = 0, autocast_dtype: torch.dtype | None = None, progress: bool = False,
             nll_out: dict[str, np.ndarray] | None = None) -> dict[str, dict]:
    modes = tuple(modes or cfg.score.modes)
    missing = [m for m in modes if m not in BUILT_MODES]
    if missing:
        raise ValueError(f"score.modes: {missing} not built yet (built: {', '.join(BUILT_MODES)})")
    stream = load_val_tokens(cfg.data.path, cfg.model.vocab_size)
    if max_val_tokens:
        stream = stream[:max_val_tokens]
    sp = load_tokenizer(cfg.data.tokenizer_path)
    luts_t = luts_to_torch(build_byte_luts(sp, cfg.model.vocab_size), env.device)
    T = cfg.score.seq_len
    model.eval()
    out = {}
    for mode in modes:
        plan = plain_plan(len(stream), T) if mode == "plain" else sliding_plan(len(stream), T,
                                                                                cfg.score.sliding.stride)
        nll = np.full(plan.n_targets, np.nan) if nll_out is not None else None
        t0 = time.perf_counter()
        lo, hi = plan.rank_windows(env)
        with Progress(f"eval {mode}", total=hi - lo, unit="win", enabled=progress and env.is_main) as bar:
            s = score_windows(model, stream, plan, luts_t, env, batch_windows=cfg.score.sliding.batch_windows,
                              autocast_dtype=autocast_dtype, nll_out=nll, progress=bar)
        if env.device.type == "cuda":
            torch.cuda.synchronize(env.device)
        out[mode] = {**s.to_json(), "seconds": time.perf_counter() - t0, "windows": plan.num_windows,
                     "seq_len": T, "stride": plan.stride, "compliant": True, "label": "compliant"}
        if nll_out is not None:
            nll_out[mode] = nll
    return out


def load_run_model(run_dir: str | Path, cfg: RunConfig, device: torch.device) -> torch.nn.Module:
    """The trained (EMA) weights of a run directory, in float32 (the artifact path comes with issue 4)."""
    from pgolf.train.loop import build_model

    p = Path(run_dir) / "model_final.pt"
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no final weights (did training finish?)")
    model = build_model(cfg, torch.device("cpu"))
    model.load_state_dict(torch.load(p, map_location="cpu", weights_only=True))
    return model.to(device)


def val_shard_files(cfg: RunConfig) -> list[str]:
    return [str(p) for p in list_shards(cfg.data.path, "val")]
