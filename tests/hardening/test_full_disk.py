"""A full disk (issue 13, item 4; the "full disk" surface): a checkpoint write or a `pgolf quantize` output that
hits ENOSPC is ONE `pgolf: error:` line naming the file, leaves no `*.tmp` behind (a partial temp file would
keep the disk full), keeps the previous file intact, and `--resume` / a rerun works once there is room.

The disk is simulated, never filled: in-process, `pgolf.files.open` is replaced by files whose writes fail with
OSError(ENOSPC) after a number of bytes (a real full disk stores what fits, then refuses); for the CLI,
`cli_fuzz.run_full_disk` runs `pgolf` in a child whose writes under the run directory fail from a chosen
write on. HARDENING_CHILD_SRC=/path/to/other/src runs the CLI children against that tree (on the landed tree,
3a30210, the checkpoint case is a torch traceback leaving ckpt/last.pt.tmp, and quantize leaves
timings.json.tmp).
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pgolf import files
from pgolf.data.shards import write_shard
from pgolf.errors import FileWriteError
from pgolf.tools.evaltool import save_nll
from pgolf.train.checkpoint import load_checkpoint, save_checkpoint
from tests.helpers.cli_fuzz import (
    assert_one_error,
    child_env,
    mini_dataset,
    run_all,
    run_bounded,
    run_full_disk,
    set_args,
    train_tiny,
)

ENOSPC_LINE = "cannot write (No space left on device)"
SETS = ("train.iterations=4", "train.val_every=0", "train.warmup_steps=0", "train.val_max_tokens=512",
        "train.checkpoint_every=1")


# ------------------------------------------------------------------------------------------ in process


class _Full(io.FileIO):
    """A file on a disk with `room` bytes left (shared by every file of one FullDisk)."""

    disk: FullDisk

    def write(self, b):
        n = memoryview(b).nbytes
        if self.disk.room <= 0:
            self.disk.refused += 1
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.name)
        k = min(n, self.disk.room)
        self.disk.room -= k
        return super().write(memoryview(b).cast("B")[:k])


class FullDisk:
    """`pgolf.files.open` on a disk with `room` bytes free (writes only; reads go to the real open)."""

    def __init__(self, monkeypatch, room: int):
        self.room, self.refused = room, 0
        disk = self

        class File(_Full):
            pass

        File.disk = disk

        def fake_open(path, mode="r", buffering=-1, **kw):
            if not any(c in mode for c in "wax+"):
                return open(path, mode, buffering, **kw)
            raw = File(path, mode.replace("b", ""))
            return raw if buffering == 0 else io.BufferedWriter(raw)

        monkeypatch.setattr(files, "open", fake_open, raising=False)


def tmp_files(d: Path) -> list[str]:
    return sorted(p.name for p in d.rglob(f"*{files.TMP_SUFFIX}"))


def payload(step: int) -> dict:
    g = torch.Generator().manual_seed(step)
    return {"model": {"w": torch.randn(256, 256, generator=g)}, "optim": {}, "ema": None, "loader": {}, "rng": {},
            "step": step, "qat_bits": 0, "train_seconds": 1.0, "val_history": [], "config": {}, "config_hash": "h"}


@pytest.mark.parametrize("room", [0, 100, 64 * 1024, 200_000])
def test_checkpoint_on_a_full_disk_keeps_the_previous_one(monkeypatch, tmp_path, room):
    p = tmp_path / "ckpt" / "last.pt"
    save_checkpoint(p, payload(1))
    before = p.read_bytes()
    disk = FullDisk(monkeypatch, room)
    with pytest.raises(FileWriteError) as e:
        save_checkpoint(p, payload(2))  # ~262 KB: never fits
    assert str(e.value) == f"{p}: {ENOSPC_LINE}; nothing was written"
    assert disk.refused >= 1 and tmp_files(tmp_path) == []
    monkeypatch.undo()
    assert p.read_bytes() == before and load_checkpoint(p)["step"] == 1
    save_checkpoint(p, payload(2))  # room again: the next save works
    assert load_checkpoint(p)["step"] == 2


def test_a_failed_fsync_is_the_same_line(monkeypatch, tmp_path):
    """ENOSPC can also surface at fsync (delayed allocation, network file systems)."""
    p = tmp_path / "timings.json"
    files.atomic_write_json(p, {"a": 1})

    def fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", fsync)
    with pytest.raises(FileWriteError, match=f"^{re.escape(str(p))}: {re.escape(ENOSPC_LINE)}; nothing was written$"):
        files.atomic_write_json(p, {"a": 2})
    monkeypatch.undo()
    assert json.loads(p.read_text()) == {"a": 1} and tmp_files(tmp_path) == []


WRITERS = {  # file name -> how pgolf writes it (torch.save, json, raw bytes, a shard, np.save's tofile)
    "last.pt": lambda p: save_checkpoint(p, payload(2)),
    "quant_summary.json": lambda p: files.atomic_write_json(p, {"x": list(range(5000))}),
    "artifact.pgolf": lambda p: files.atomic_write_bytes(p, bytes(100_000)),
    "fineweb_val_000000.bin": lambda p: write_shard(p, np.arange(50_000) % 512),
    "nll.npy": lambda p: save_nll(p, {"plain": np.ones(10_000)}),
}


@pytest.mark.parametrize("name", list(WRITERS))
def test_a_real_enospc_from_the_kernel(tmp_path, name):
    """The temp file is a link to /dev/full, whose every write fails with the kernel's own ENOSPC, whatever
    writes it (numpy's tofile and torch's zip writer bypass Python's file objects)."""
    p = tmp_path / name
    p.write_bytes(b"the previous version")
    (tmp_path / (name + files.TMP_SUFFIX)).symlink_to("/dev/full")
    with pytest.raises(FileWriteError) as e:
        WRITERS[name](p)
    assert str(e.value) == f"{p}: {ENOSPC_LINE}; nothing was written"
    assert p.read_bytes() == b"the previous version"
    assert sorted(x.name for x in tmp_path.iterdir()) == [name], "the temp file (here: the link) is removed"


def test_an_append_on_a_full_disk_leaves_no_torn_line(monkeypatch, tmp_path):
    p = tmp_path / "log.txt"
    p.write_text("line 1\n")
    FullDisk(monkeypatch, 5)
    with pytest.raises(FileWriteError, match=f"^{re.escape(str(p))}: cannot append \\(No space left on device\\)$"):
        files.append_text(p, "a line longer than the room left\n")
    monkeypatch.undo()
    assert p.read_text() == "line 1\n"


# ------------------------------------------------------------------------------------------ the CLI


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_data):
    return mini_dataset(tmp_path_factory.mktemp("fulldata"), tiny_data)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data) -> Path:
    """The same run, uninterrupted."""
    d = tmp_path_factory.mktemp("fullref") / "run"
    train_tiny(d, data, *SETS)
    return d


def steps_of(ckpt: Path) -> int:
    return int(torch.load(ckpt, weights_only=True)["step"])


def test_a_full_disk_during_a_checkpoint_write_then_resume(tmp_path, data, reference):
    run = tmp_path / "run"
    ckpt = run / "ckpt" / "last.pt"
    args = ["train", "--preset", "tiny", *set_args(data, *SETS), "--run-dir", run, "--no-progress"]
    # the disk fills while the second checkpoint (step 2) is written: 4 KB of it fit, then ENOSPC
    r, facts = run_full_disk(args, run, name="last.pt.tmp", nth=2, free=4096, env=child_env())
    assert facts["full"] and facts["failed"][:1] == ["last.pt.tmp"], facts
    assert_one_error(r, str(ckpt), "No space left on device")
    assert tmp_files(run) == [], "a partial temp file keeps the disk full"
    assert steps_of(ckpt) == 1  # the last good checkpoint
    # resuming on the still-full disk: the same one line, the checkpoint of step 1 still there
    r, facts = run_full_disk(["train", "--resume", run, "--no-progress"], run, name="last.pt.tmp", nth=1, free=0,
                             env=child_env())
    assert facts["full"], facts
    assert_one_error(r, str(ckpt), "No space left on device")
    assert tmp_files(run) == [] and steps_of(ckpt) == 1
    # with room again, --resume finishes the run, bit-identical to the uninterrupted one
    r = run_bounded(["train", "--resume", run, "--no-progress"], env=child_env(), wall=300, cpu=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert steps_of(ckpt) == 4
    got = torch.load(run / "model_final.pt", weights_only=True)
    want = torch.load(reference / "model_final.pt", weights_only=True)
    assert list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in want)


QUANTIZE_FULL = {  # the file whose write meets the full disk -> the file the error line names
    "artifact.pgolf.tmp": "artifact.pgolf",
    "timings.json.tmp": "timings.json",
    "quant_summary.json.tmp": "quant_summary.json",
    "log.txt": "log.txt",
}


def test_quantize_into_a_full_disk(tmp_path, reference):
    args = ["--code-bytes", "0", "--set", "quant.method=rtn"]
    dirs = {}
    for i, (name, named) in enumerate(QUANTIZE_FULL.items()):
        d = tmp_path / f"q{i}"
        shutil.copytree(reference, d)
        r, facts = run_full_disk(["quantize", "--run-dir", d, *args], d, name=name, nth=1, free=0,
                                 env=child_env())
        assert facts["full"], (name, facts)
        line = assert_one_error(r, "No space left on device")
        assert line.startswith(f"pgolf: error: {d / named}: ") or (
            # a log line written inside a timed phase: the phase's timings.json write on the way out meets the
            # same full disk and its error replaces the first (telemetry.PhaseTimer records failed phases too)
            name == "log.txt" and line.startswith(f"pgolf: error: {d / 'timings.json'}: ")), (name, line)
        assert tmp_files(d) == [], f"{name}: {tmp_files(d)} left behind ({line})"
        dirs[name] = d
    # with room again, quantizing again works and the run's records agree (budget reads them all)
    again = [["quantize", "--run-dir", d, *args] for d in dirs.values()]
    budget = [["budget", "--run-dir", d, "--code-bytes", "0"] for d in dirs.values()]
    for name, r in zip([*dirs, *dirs], run_all(again + budget, seconds_each=120)):
        assert r.returncode == 0, (name, r.stderr[-2000:])
    for d in dirs.values():
        s = json.loads((d / "quant_summary.json").read_text())
        assert s["artifact_bytes"] == (d / "artifact.pgolf").stat().st_size
