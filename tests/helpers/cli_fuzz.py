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
    tally(errs[0])
    return errs[0]


def tally(line: str) -> None:
    """HARDENING_TALLY=FILE: append one line per input that kept the promise (the test, then the error line),
    for counting the inputs each surface tries."""
    if path := os.environ.get("HARDENING_TALLY"):
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(f"{os.environ.get('PYTEST_CURRENT_TEST', '?').split(' ')[0]}\t{line}\n")


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


_FULL_DISK_CHILD = r"""
import builtins, errno, io, json, os, runpy, sys
spec = json.loads(os.environ.pop("PGOLF_TEST_FULL_DISK"))
root = os.path.realpath(spec["root"])
state = {"opened": 0, "free": None, "failed": []}  # free None = the disk still has room

class DiskFile(io.FileIO):
    # A file on the simulated disk: once it is full, a write stores what still fits, the next raises ENOSPC.
    def write(self, b):
        n = memoryview(b).nbytes
        if state["free"] is None:
            return super().write(b)
        if state["free"] == 0:
            state["failed"].append(os.path.basename(self.name))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.name)
        k = min(n, state["free"])
        state["free"] -= k
        return super().write(memoryview(b).cast("B")[:k])

real_open = io.open

def disk_open(file, mode="r", buffering=-1, encoding=None, errors=None, newline=None, closefd=True, opener=None):
    writes = any(c in mode for c in "wax+")
    if not writes or not isinstance(file, (str, bytes, os.PathLike)) or not os.path.realpath(
            os.fsdecode(file)).startswith(root + os.sep):
        return real_open(file, mode, buffering, encoding, errors, newline, closefd, opener)
    if os.path.basename(os.fsdecode(file)) == spec["name"]:
        state["opened"] += 1
        if state["opened"] == spec["nth"]:
            state["free"] = spec["free"]  # the disk fills up during this write
    raw = DiskFile(file, mode.replace("b", "").replace("t", ""), closefd=closefd, opener=opener)
    if buffering == 0:
        return raw
    f = (io.BufferedRandom if "+" in mode else io.BufferedWriter)(raw)
    return f if "b" in mode else io.TextIOWrapper(f, encoding, errors, newline, line_buffering=buffering == 1)

builtins.open = io.open = disk_open
sys.argv = ["pgolf", *spec["args"]]
try:
    runpy.run_module("pgolf", run_name="__main__", alter_sys=True)
finally:
    print(json.dumps({"opened": state["opened"], "full": state["free"] is not None, "failed": state["failed"]}),
          file=sys.__stdout__)
"""


def run_full_disk(args: Sequence[str], root, *, name: str, nth: int = 1, free: int = 4096,
                  env: dict[str, str] | None = None, wall: float = WALL_SECONDS) -> tuple[Bounded, dict]:
    """`pgolf ARGS` (run in a child under the limits) on a simulated disk holding `root`: writes go through
    until the `nth` open for writing of a file named `name` under `root`; from then on the disk has `free`
    bytes left: a write stores what still fits (a partial file, as on a real disk) and every later write under
    `root` fails with OSError(ENOSPC). -> (the result, {"opened": opens of `name`, "full": whether the disk
    filled, "failed": base names of the files whose writes failed})."""
    import json

    spec = {"root": str(root), "name": name, "nth": nth, "free": free, "args": list(map(str, args))}
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("PGOLF_")}
    child_env.update({"OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "0"})
    child_env.update(env or {})
    child_env["PGOLF_TEST_FULL_DISK"] = json.dumps(spec)
    t0 = time.perf_counter()
    try:
        r = subprocess.run([sys.executable, "-c", _FULL_DISK_CHILD], capture_output=True, text=True, env=child_env,
                           timeout=wall, preexec_fn=_limits(MEMORY_LIMIT, CPU_SECONDS))
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"pgolf {' '.join(map(str, args))} on a full disk: no answer within {wall:.0f}s") from e
    lines = r.stdout.splitlines()
    facts = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    return Bounded(r.returncode, "\n".join(lines[:-1]), r.stderr, time.perf_counter() - t0, 0.0), facts


def other_src() -> str | None:
    """HARDENING_CHILD_SRC (or the older name HARDENING_LANDED_SRC): another tree's src/ to run the children
    of the CLI cases against (e.g. the landed tree, where the regression cases fail); None = this tree."""
    return os.environ.get("HARDENING_CHILD_SRC") or os.environ.get("HARDENING_LANDED_SRC") or None


def child_env() -> dict[str, str]:
    """The environment a child needs to run `other_src()`'s pgolf (empty for this tree)."""
    src = other_src()
    return {"PYTHONPATH": src} if src else {}


def mini_dataset(root, tiny_data, train: int = 1, val: int = 1) -> dict:
    """The first `train` train and `val` val shards of the tiny dataset in root/mini (+ its tokenizer), in
    the form of the `tiny_data` fixture (dataset_dir, tokenizer): a run on it opens less."""
    import shutil
    from pathlib import Path

    d = Path(root) / "mini"
    d.mkdir(parents=True)
    for split, n in (("train", train), ("val", val)):
        for i in range(n):
            shutil.copy(tiny_data["dataset_dir"] / f"fineweb_{split}_{i:06d}.bin", d)
    return {"dataset_dir": d, "tokenizer": tiny_data["tokenizer"]}


def set_args(data: dict, *sets: str) -> list[str]:
    """--set data.path=... --set data.tokenizer_path=... --set SETS... for the dataset `data`."""
    out: list[str] = []
    for s in (f"data.path={data['dataset_dir']}", f"data.tokenizer_path={data['tokenizer']}", *sets):
        out += ["--set", s]
    return out


def train_tiny(run_dir, data: dict, *sets: str) -> Bounded:
    """`pgolf train --preset tiny` of `data` into run_dir by `other_src()`'s tree (or this one); must succeed."""
    r = run_bounded(["train", "--preset", "tiny", *set_args(data, *sets), "--run-dir", run_dir, "--no-progress"],
                    env=child_env(), wall=300, cpu=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def run_all(cases: Sequence[Sequence[str]], *, seconds_each: int = 60) -> list[Bounded]:
    """Every case in one child (`run_many`), or with `other_src()` one child each against that tree (its CLI
    module may live elsewhere; `python -m pgolf` finds it)."""
    if other_src():
        return [run_bounded(c, env=child_env(), cpu=seconds_each * 2, wall=seconds_each * 3) for c in cases]
    return run_many(cases, seconds_each=seconds_each)


def run_measured(args: Sequence[str], *, memory: int = MEMORY_LIMIT, cpu: int = CPU_SECONDS,
                 wall: float = WALL_SECONDS, env: dict[str, str] | None = None) -> Bounded:
    """`run_bounded`, with max_rss_mib that of THIS child alone (os.wait4), not the largest child so far."""
    import tempfile
    import threading

    child_env = {k: v for k, v in os.environ.items() if not k.startswith("PGOLF_")}
    child_env.update({"OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "0"})
    child_env.update(env or {})
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen([sys.executable, "-m", "pgolf", *map(str, args)], stdout=out, stderr=err,
                             env=child_env, preexec_fn=_limits(memory, cpu))
        timer = threading.Timer(wall, p.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(p.pid, 0)
        finally:
            timer.cancel()
        p.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - t0
        if seconds >= wall:
            raise AssertionError(f"pgolf {' '.join(map(str, args))}: no answer within {wall:.0f}s (a hang)")
        out.seek(0)
        err.seek(0)
        return Bounded(p.returncode, out.read().decode(errors="replace"), err.read().decode(errors="replace"),
                       seconds, usage.ru_maxrss / 1024)
