"""Run `pgolf` on bad input in a child process with hard limits, and check it failed the way users are promised.

`run_bounded(args)` runs `python -m pgolf ARGS` with an address-space limit (RLIMIT_AS), a CPU-time limit
and a wall timeout, so a hang or a runaway allocation fails the test instead of the machine.
`assert_one_error(result, mentions)` checks the promise of the README: a non-zero exit, exactly one
`pgolf: error: ...` line on stderr naming the file or key (every string of `mentions` appears in it), no
traceback, and nothing else on stderr.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

MEMORY_LIMIT = 3 * 2**30
"""Address space of the child: torch alone maps ~1.5 GB of virtual memory at import; 3 GiB leaves ~1.5 GiB
for the work, far below what an unbounded allocation from a crafted file would reach."""
CPU_SECONDS = 120
WALL_SECONDS = 180


@dataclass
class Bounded:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    max_rss_mib: float


def _limits(memory: int, cpu: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    return apply


def run_bounded(args: Sequence[str], *, memory: int = MEMORY_LIMIT, cpu: int = CPU_SECONDS,
                wall: float = WALL_SECONDS, env: dict[str, str] | None = None, cwd=None) -> Bounded:
    """`python -m pgolf ARGS` under the limits; a wall timeout kills the child and fails loudly."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("PGOLF_")}
    child_env.update({"OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "0"})
    child_env.update(env or {})
    t0 = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    try:
        r = subprocess.run([sys.executable, "-m", "pgolf", *map(str, args)], capture_output=True, text=True,
                           env=child_env, cwd=cwd, timeout=wall, preexec_fn=_limits(memory, cpu))
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"pgolf {' '.join(map(str, args))}: no answer within {wall:.0f}s (a hang)") from e
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return Bounded(r.returncode, r.stdout, r.stderr, time.perf_counter() - t0, max(after, before) / 1024)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("pgolf: error:")]


def assert_one_error(r: Bounded, *mentions: str, code: int | None = None) -> str:
    """The failure as promised: non-zero exit (or exactly `code`), one `pgolf: error:` line containing every
    string of `mentions`, no traceback and no other stderr output; returns the line."""
    where = f"exit {r.returncode}; stderr:\n{r.stderr[-2000:]}"
    assert r.returncode != 0, f"expected a failure, got {where}"
    if code is not None:
        assert r.returncode == code, where
    assert "Traceback" not in r.stderr, where
    assert r.returncode not in (-9, 137, -24), f"killed by a limit (memory or CPU time): {where}"
    errs = error_lines(r.stderr)
    assert len(errs) == 1, f"expected one 'pgolf: error:' line, {where}"
    others = [line for line in r.stderr.splitlines() if line.strip() and not line.startswith("pgolf: error:")]
    assert not others, f"stderr holds more than the error line: {where}"
    for m in mentions:
        assert m in errs[0], f"{m!r} not named in {errs[0]!r}"
    return errs[0]


_BATCH_CHILD = r"""
import contextlib, io, json, resource, signal, sys, time, traceback
from pgolf.tools.cli import main
cases = json.loads(sys.stdin.read())
out = []
class Hang(Exception):
    pass
def alarm(signum, frame):
    raise Hang()
signal.signal(signal.SIGALRM, alarm)
for args, seconds in cases:
    err, std = io.StringIO(), io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(std):
        signal.alarm(seconds)
        try:
            rc = main(args)
        except SystemExit as e:  # argparse usage errors
            rc = e.code if isinstance(e.code, int) else 1
        except Hang:
            rc = "hang"
        except BaseException:
            rc = "raised"
            traceback.print_exc()
        finally:
            signal.alarm(0)
    out.append({"args": args, "rc": rc, "stderr": err.getvalue(), "seconds": time.perf_counter() - t0,
                "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
print(json.dumps(out))
"""


def run_many(cases: Sequence[Sequence[str]], *, seconds_each: int = 60, memory: int = MEMORY_LIMIT,
             env: dict[str, str] | None = None, cwd=None) -> list[Bounded]:
    """Many `pgolf` invocations in ONE child process (torch imported once) under the address-space limit,
    each with its own alarm; -> one Bounded per case (returncode "hang" / "raised" become 124 / 1 with the
    traceback in stderr, so `assert_one_error` reports them)."""
    import json

    child_env = {k: v for k, v in os.environ.items() if not k.startswith("PGOLF_")}
    child_env.update({"OMP_NUM_THREADS": "1"})
    child_env.update(env or {})
    payload = json.dumps([[list(map(str, c)), seconds_each] for c in cases])
    r = subprocess.run([sys.executable, "-c", _BATCH_CHILD], input=payload, capture_output=True, text=True,
                       env=child_env, cwd=cwd, timeout=seconds_each * len(cases) + 120,
                       preexec_fn=_limits(memory, seconds_each * len(cases) + 60))
    if r.returncode != 0:
        raise AssertionError(f"the batch child died (exit {r.returncode}): {r.stderr[-3000:]}")
    out = []
    for rec in json.loads(r.stdout.splitlines()[-1]):
        rc = {"hang": 124, "raised": 1}.get(rec["rc"], rec["rc"])
        out.append(Bounded(rc if isinstance(rc, int) else 1, "", rec["stderr"], rec["seconds"], rec["max_rss_mib"]))
    return out


def broken_promises(names: Sequence[str], mentions: Sequence[Sequence[str]], results: Sequence[Bounded],
                    seconds: float = 10, width: int = 400) -> list[str]:
    """'name: what went wrong' for every result that is not one error line naming all of its mentions within
    `seconds` (empty = every promise kept); each entry is cut to `width` characters."""
    out = []
    for name, m, r in zip(names, mentions, results):
        try:
            line = assert_one_error(r, *m)
            assert r.seconds < seconds, f"took {r.seconds:.1f}s: {line}"
        except AssertionError as e:
            out.append(f"{name}: " + " | ".join(str(e).splitlines()[-3:])[-width:])
    return out
