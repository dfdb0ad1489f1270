"""`pgolf bench ...`: benchmarks that print figures (speed targets live here, not in tests)."""

from __future__ import annotations

import resource
import tempfile
import time

import torch

from pgolf.config import RunConfig
from pgolf.runtime import DistEnv


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def bench_train(cfg: RunConfig, env: DistEnv, steps: int = 10) -> dict:
    """Time `steps` optimizer steps after the configured warm-up (compile), on the configured data."""
    from pgolf.train.loop import Trainer

    with tempfile.TemporaryDirectory(prefix="pgolf-bench-") as tmp:
        tr = Trainer(cfg, env, tmp, progress=False, echo=False)
        tr._setup()
        if tr.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(tr.device)
        t_w = time.perf_counter()
        for _ in range(max(cfg.train.warmup_steps, 1)):
            tr.train_step(1.0, cfg.optim.muon_momentum)
        tr._sync()
        warm = time.perf_counter() - t_w
        t0 = time.perf_counter()
        loss = None
        for _ in range(steps):
            loss = tr.train_step(1.0, cfg.optim.muon_momentum)
        tr._sync()
        dt = time.perf_counter() - t0
        out = {
            "preset": cfg.preset,
            "device": str(tr.device),
            "world_size": env.world_size,
            "grad_accum": tr.accum,
            "attention": tr.attn_name,
            "compile": tr.compile,
            "precision": "bf16-autocast" if tr.amp_dtype else "fp32",
            "params": tr.raw_model.num_params(),
            "batch_tokens": cfg.train.batch_tokens,
            "steps_timed": steps,
            "warmup_seconds": round(warm, 2),
            "ms_per_step": round(1000 * dt / steps, 2),
            "tokens_per_second_global": round(cfg.train.batch_tokens * steps / dt, 1),
            "tokens_per_second_per_rank": round(cfg.train.batch_tokens * steps / dt / env.world_size, 1),
            "last_loss": round(float(loss), 4) if loss is not None else None,
        }
        if tr.device.type == "cuda":
            out["peak_mem_allocated_mib"] = torch.cuda.max_memory_allocated(tr.device) // 2**20
            out["peak_mem_reserved_mib"] = torch.cuda.max_memory_reserved(tr.device) // 2**20
        else:
            out["peak_rss_mib"] = round(_peak_rss_mib(), 1)
            out["torch_threads"] = torch.get_num_threads()
        return out
