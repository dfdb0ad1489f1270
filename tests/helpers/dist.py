"""spawn_gloo: run a function on N CPU ranks joined by a gloo process group (docs/DESIGN.md#house-rules).

    def body(env: DistEnv, x):            # module-level, so the spawned children can import it
        t = torch.tensor([float(env.rank)])
        env.all_reduce_(t)
        return t                          # anything torch.save can write

    results = spawn_gloo(2, body, 3.0)    # [rank 0's return value, rank 1's return value]

A child exception fails the calling test with the child's traceback (torch's ProcessRaisedException);
a child that hangs fails it after `timeout` seconds. Children run with one intra-op thread so two ranks
do not oversubscribe small CI machines.
"""

from __future__ import annotations

import datetime
import os
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pgolf.runtime import DistEnv


def free_port() -> int:
    """A TCP port that was free a moment ago (bind to port 0 and let the OS pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(rank: int, world_size: int, port: int, out_dir: str, fn: Callable[..., Any], args: tuple,
           timeout_s: float) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    # The collective timeout turns a deadlock into an exception (and so a traceback) in the child.
    dist.init_process_group("gloo", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=timeout_s))
    try:
        env = DistEnv(rank=rank, world_size=world_size, local_rank=rank, device=torch.device("cpu"),
                      backend="gloo")
        result = fn(env, *args)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def spawn_gloo(world_size: int, fn: Callable[..., Any], *args: Any, timeout: float = 60.0) -> list[Any]:
    """Run fn(env, *args) on `world_size` spawned CPU ranks; return each rank's return value.

    fn and args must be picklable (fn defined at module level of an importable module).
    """
    with tempfile.TemporaryDirectory(prefix="pgolf_dist_") as out_dir:
        ctx = mp.spawn(_child, args=(world_size, free_port(), out_dir, fn, args, timeout),
                       nprocs=world_size, join=False)
        deadline = time.monotonic() + timeout
        # join() raises ProcessRaisedException / ProcessExitedException carrying the child's traceback.
        while not ctx.join(timeout=0.5):
            if time.monotonic() > deadline:
                for p in ctx.processes:
                    if p.is_alive():
                        p.kill()
                    p.join()
                raise TimeoutError(f"spawn_gloo: {fn.__name__} did not finish on {world_size} ranks "
                                   f"within {timeout:.0f} s")
        return [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=False) for r in range(world_size)]
