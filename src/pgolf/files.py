"""Atomic file writes: a temp file beside the target, fsync, rename, then fsync of the directory.

A reader never sees a half-written file, a kill mid-write leaves the previous version, and a failed
write (a full disk, say) removes its temp file and raises one `FileWriteError` line naming the file, so
nothing partial is left to fill the disk or be mistaken for output. Every writer of a run directory,
checkpoint or artifact goes through here.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from pgolf.errors import FileWriteError

TMP_SUFFIX = ".tmp"


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not every platform lets a directory be opened; the rename itself is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """`with atomic_open(p) as fh: fh.write(...)`: the file appears at `p` complete, or not at all."""
    p = Path(path)
    tmp = p.with_name(p.name + TMP_SUFFIX)
    try:
        with open(tmp, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        reason = exc.strerror or type(exc).__name__
        raise FileWriteError(f"{p}: cannot write ({reason}); nothing was written") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(p.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path) as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Pretty JSON (indent 2, trailing newline); values JSON cannot hold are written with str()."""
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")
