"""Training-batch GPTQ calibration (quant.calib_source=train), inside the training wallclock.

Calibrating on training data after the 600 s window is not allowed (docs/DESIGN.md#quant-calibration),
so the trainer shortens its cap by quant.calib_reserve_seconds and, right after the final (EMA) weights
are in place, collects the Hessians from the next training batches. The time is charged to training
(`charged_seconds` in train_summary.json); the Hessians go to the run directory's hessians.pt (tensors
only, read back with weights_only=True by the quantize stage).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from pgolf.config import QuantConfig
from pgolf.files import atomic_open
from pgolf.quant.hessian import collect_hessians
from pgolf.rundir import HESSIANS, RunLogger
from pgolf.runtime import DistEnv, sync


def calibrate_on_train(model: nn.Module, loader, q: QuantConfig, env: DistEnv, run_dir: Path,
                       log: RunLogger, train_seconds: float) -> float:
    """Hessians of `model` on quant.calib_seqs training sequences (dealt across ranks by the loader's rank
    striding), saved to run_dir/hessians.pt; returns the seconds it took."""
    device = env.device
    per_rank = len(range(env.rank, q.calib_seqs, env.world_size))
    sync(device)
    t0 = time.perf_counter()
    seqs: list[torch.Tensor] = []
    while sum(int(s.size(0)) for s in seqs) < per_rank:
        for x, _ in loader.next_step():
            seqs.append(x)
    rows = torch.cat(seqs)[:per_rank].to(device)  # (per_rank, seq_len) training tokens
    batches = list(rows.split(q.calib_batch))
    model.set_qat(0)  # the recorder must see the parameters themselves, not fake-quantized copies
    H = collect_hessians(model, batches, env, head=q.head_gptq)
    sync(device)
    secs = time.perf_counter() - t0
    if env.is_main:
        with atomic_open(run_dir / HESSIANS) as fh:
            torch.save({k: v.cpu() for k, v in H.items()}, fh)
    log.timing("calibration_train", secs)
    over = secs > q.calib_reserve_seconds
    log.log(f"calibration: {q.calib_seqs} training sequences, {len(H)} hessians in {secs:.1f}s "
            f"(reserve {q.calib_reserve_seconds:.1f}s{'; EXCEEDED the reserve' if over else ''}); "
            f"charged train_time:{(train_seconds + secs) * 1000:.0f}ms")
    return secs
