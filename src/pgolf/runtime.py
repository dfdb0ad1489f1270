"""Process-wide facts, decided once: the distributed environment, device, seeds, precision.

`DistEnv` is created once by `init()` (from torchrun's RANK / WORLD_SIZE / LOCAL_RANK) and passed
explicitly to everything that communicates. This is the only module that calls
`init_process_group`, and with `presets.py` the only one that reads the environment.
At world size 1 no process group is created and every collective is a no-op.

Also here, so that no stage asks another for them: the precision a run computes in
(`resolve_precision`), the autocast context for it (`autocast`), a device sync (`sync`) and the one
contiguous rank split of a range (`rank_share`).
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from pgolf.config import RunConfig


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str = ""
    """'' when no process group exists (world size 1)."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def all_reduce_(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """In-place all-reduce (sum or max); a no-op at world size 1."""
        if self.distributed:
            dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return t

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """`obj` of rank `src` on every rank (picklable objects); itself at world size 1."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]


def init(device: str = "auto") -> DistEnv:
    """Read torchrun's environment, pick the device, create the process group if world size > 1.

    device: "auto" (cuda:LOCAL_RANK when CUDA is available, else cpu), "cpu" or "cuda".
    The backend is NCCL on CUDA and gloo on CPU; multi-node works with torchrun's usual flags
    (--nnodes, --node_rank, --rdzv_endpoint) because only the standard variables are read.
    """
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda:
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    backend = ""
    if world > 1:
        backend = "nccl" if use_cuda else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend=backend, device_id=dev if use_cuda else None)
    return DistEnv(rank=rank, world_size=world, local_rank=local, device=dev, backend=backend)


def shutdown(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def session(device: str = "auto") -> Iterator[DistEnv]:
    """`with session(device) as env:` = init(), then shutdown() however the block ends."""
    env = init(device)
    try:
        yield env
    finally:
        shutdown(env)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rank_share(lo: int, hi: int, env: DistEnv) -> tuple[int, int]:
    """This rank's contiguous part [a, b) of the range [lo, hi): the ranks' parts tile it in rank order and
    differ in length by at most one. The one rank split of pgolf (windows, chunks, sequences, batches)."""
    n = hi - lo
    return lo + n * env.rank // env.world_size, lo + n * (env.rank + 1) // env.world_size


def resolve_precision(cfg: RunConfig, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """-> (autocast dtype, or None for fp32; torch.compile on?) for the run's train.precision and
    train.compile ("auto": bf16 autocast and compile on CUDA, fp32 eager elsewhere)."""
    p = cfg.train.precision
    dtype = torch.bfloat16 if (p == "bf16" or (p == "auto" and device.type == "cuda")) else None
    c = cfg.train.compile
    return dtype, (c == "on" or (c == "auto" and device.type == "cuda"))


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """torch.autocast on `device` to `dtype`, or a no-op context for fp32 (dtype None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); a no-op on CPU. Timers call it at phase edges."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
