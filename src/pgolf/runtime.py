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
import functools
import math
import os
import random
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from pgolf.config import RunConfig
from pgolf.files import problem


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

    def all_gather_object(self, obj: Any) -> list[Any]:
        """[every rank's obj] in rank order (picklable objects); [obj] at world size 1."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

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


BF16_MIN_SPEEDUP = 1.25
"""precision=auto on CPU picks bf16 autocast only if bf16 matmuls run at least this much faster than fp32."""
_PROBE_SHAPE = (1024, 256, 768)
"""(M, K, N) of the probe matmul: a 1,024-token batch through a 256 -> 768 MLP projection, the cpu preset's."""


def load_torch_file(path: Path, what: str, error: type[Exception], map_location: Any = "cpu") -> Any:
    """torch.load with weights_only=True (no code runs from a pickle); any failure becomes `error` with one
    line `PATH: unreadable WHAT (Type: reason)`. torch reports damaged zips and refused pickles with many
    exception types, and warns about odd pickles before refusing them: the error line says it instead."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise error(f"{path}: unreadable {what} ({problem(exc)})") from None


@dataclass(frozen=True)
class BF16Probe:
    """What a short measurement says about bf16 matmuls on this CPU (measured once per process)."""

    fp32_gflops: float
    bf16_gflops: float
    seconds: float
    cpu_flags: tuple[str, ...]
    """The CPU's bf16-related flags from /proc/cpuinfo (amx_bf16, amx_tile, avx512_bf16), when readable."""

    @property
    def speedup(self) -> float:
        return self.bf16_gflops / self.fp32_gflops


def _cpu_bf16_flags() -> tuple[str, ...]:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ()
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return tuple(f for f in ("amx_bf16", "amx_tile", "avx512_bf16") if f in flags)


def _gflops(a: torch.Tensor, b: torch.Tensor, min_seconds: float = 0.02, rounds: int = 3) -> float:
    """The best of `rounds` timings, each of as many matmuls as fill `min_seconds` (at least one).

    A round that lasts well past a scheduler tick is not decided by one context switch or page fault (a
    round of one or two sub-millisecond matmuls was: under load it once made bf16 look slower than fp32
    on an AMX machine); the best round is the least disturbed by other load."""
    torch.mm(a, b)  # warm-up (oneDNN picks and caches its kernel)
    t0 = time.perf_counter()
    torch.mm(a, b)
    one = max(time.perf_counter() - t0, 1e-6)
    reps = max(1, min(10_000, math.ceil(min_seconds / one)))
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    m, k = a.shape
    return 2.0 * m * k * b.shape[1] * reps / max(best, 1e-9) / 1e9


@functools.cache
def probe_cpu_bf16() -> BF16Probe:
    """Time the probe matmul in fp32 and in bf16 on this CPU (~0.2-0.5 s; cached for the process).

    bf16 is what autocast runs the linears in; on CPUs with AMX (or AVX512-BF16) units it is several
    times faster than fp32, on CPUs without them (AVX2, plain AVX-512) it is emulated and ~20x slower."""
    t0 = time.perf_counter()
    m, k, n = _PROBE_SHAPE
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=gen)
    b = torch.randn(k, n, generator=gen)
    fp32 = _gflops(a, b)
    bf16 = _gflops(a.bfloat16(), b.bfloat16())
    return BF16Probe(fp32, bf16, time.perf_counter() - t0, _cpu_bf16_flags())


@dataclass(frozen=True)
class Precision:
    """The precision a stage computes in, and why (logged; recorded in env.json and results.json)."""

    dtype: torch.dtype | None
    """The autocast dtype, or None for fp32."""
    requested: str
    """The config's value: "auto", "bf16" or "fp32"."""
    reason: str

    @property
    def name(self) -> str:
        return "bf16-autocast" if self.dtype is not None else "fp32"

    def to_json(self) -> dict:
        return {"precision": self.name, "requested": self.requested, "reason": self.reason}

    @staticmethod
    def from_json(d: dict) -> Precision:
        """The decision recorded in a run directory (so a resumed run computes as it did)."""
        dtype = torch.bfloat16 if d["precision"] == "bf16-autocast" else None
        return Precision(dtype, d["requested"], f"as recorded: {d['reason']}")


def choose_precision(requested: str, device: torch.device) -> Precision:
    """bf16 / fp32 as requested; "auto": bf16 autocast on CUDA; on a CPU with AMX bf16 units (the amx_bf16
    flag: a capability check, reliable where a measurement under load is not) bf16; on any other CPU bf16
    only where its bf16 matmuls measure at least BF16_MIN_SPEEDUP x faster than fp32 (`probe_cpu_bf16`:
    AVX2 and plain AVX-512 CPUs emulate bf16 and measure far below; AVX512-BF16 without AMX is measured)."""
    if requested == "bf16":
        return Precision(torch.bfloat16, requested, "requested")
    if requested == "fp32":
        return Precision(None, requested, "requested")
    if requested != "auto":
        raise ValueError(f"precision must be auto, bf16 or fp32, got {requested!r}")
    if device.type == "cuda":
        return Precision(torch.bfloat16, requested, "auto: CUDA")
    p = probe_cpu_bf16()
    amx = "amx_bf16" in p.cpu_flags
    fast = amx or p.speedup >= BF16_MIN_SPEEDUP
    flags = ", ".join(p.cpu_flags) if p.cpu_flags else "no amx_bf16/avx512_bf16 flags"
    rule = ("AMX bf16 units decide it whatever the measurement (under load a probe can measure both dtypes at "
            "the same contended speed)" if amx else f"bf16 needs >= {BF16_MIN_SPEEDUP}x")
    why = (f"auto: bf16 matmul {p.speedup:.2f}x fp32 on this CPU (fp32 {p.fp32_gflops:.0f} GFLOP/s, bf16 "
           f"{p.bf16_gflops:.0f} GFLOP/s; {flags}; {rule})")
    return Precision(torch.bfloat16 if fast else None, requested, why)


def train_precision(cfg: RunConfig, env: DistEnv) -> Precision:
    """Training (and self-generated calibration) precision: train.precision; rank 0 decides for all ranks."""
    return env.broadcast_object(choose_precision(cfg.train.precision, env.device))


def score_precision(cfg: RunConfig, env: DistEnv) -> Precision:
    """Scoring precision: score.precision, decided on the machine that scores by the same rule (rank 0
    decides for all ranks, so every rank computes the same math)."""
    return env.broadcast_object(choose_precision(cfg.score.precision, env.device))


def compile_on(cfg: RunConfig, device: torch.device) -> bool:
    """train.compile: "on", "off", or "auto" = on CUDA only (a cold CPU compile costs ~1-2 minutes)."""
    c = cfg.train.compile
    return c == "on" or (c == "auto" and device.type == "cuda")


def resolve_precision(cfg: RunConfig, env: DistEnv) -> tuple[torch.dtype | None, bool]:
    """-> (training autocast dtype, or None for fp32; torch.compile on?)."""
    return train_precision(cfg, env).dtype, compile_on(cfg, env.device)


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """torch.autocast on `device` to `dtype`, or a no-op context for fp32 (dtype None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); a no-op on CPU. Timers call it at phase edges."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
