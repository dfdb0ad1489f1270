"""Atomic file writes: a temp file beside the target, fsync, rename, then fsync of the directory.

A reader never sees a half-written file, a kill mid-write leaves the previous version, and a failed
write (a full disk, say) removes its temp file and raises one `FileWriteError` line naming the file, so
nothing partial is left to fill the disk or be mistaken for output. Every writer of a run directory,
checkpoint or artifact goes through here: `atomic_open` (also under torch.save) / `atomic_write_*` replace
a file whole, `append_text` adds to a log (unbuffered, not fsynced; a failed append is cut back to where
it started, so no torn line is left). `problem(exc)` is the one-line reason readers put after a file's name.
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
MAX_REASON = 200


def problem(exc: BaseException) -> str:
    """`Type: first line of the message` (at most MAX_REASON characters): a reason that fits on one line."""
    text = (str(exc).strip().splitlines() or [""])[0].strip()
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    if len(text) > MAX_REASON:
        text = text[:MAX_REASON] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def os_error_in(exc: BaseException | None) -> OSError | None:
    """The OSError behind a failed write: `exc` itself, or the one a RuntimeError wraps (torch.save reports a
    full disk as "RuntimeError: ... unexpected pos" with the OSError as its context); else None."""
    if isinstance(exc, OSError):
        return exc
    seen = 0
    while isinstance(exc, RuntimeError) and seen < 8:
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
        if isinstance(exc, OSError):
            return exc
    return None


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


def _write_error(p: Path, exc: OSError) -> FileWriteError:
    return FileWriteError(f"{p}: cannot write ({exc.strerror or type(exc).__name__}); nothing was written")


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """`with atomic_open(p) as fh: fh.write(...)`: the file appears at `p` complete, or not at all.

    A failure whose cause is an OSError (a full disk, also when a library such as torch.save wraps it in
    its own exception) removes the temp file and raises FileWriteError; anything else removes the temp
    file and propagates."""
    p = Path(path)
    tmp = p.with_name(p.name + TMP_SUFFIX)
    try:
        with open(tmp, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        os_exc = os_error_in(exc)
        if os_exc is not None and not isinstance(exc, FileWriteError):
            raise _write_error(p, os_exc) from None
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


def append_text(path: str | os.PathLike, text: str) -> None:
    """Append `text` to `path` (log.txt, metrics.jsonl), unbuffered. On failure the file is cut back to its
    previous length (no torn line) and FileWriteError names it."""
    p = Path(path)
    view = memoryview(text.encode("utf-8"))
    try:
        with open(p, "ab", buffering=0) as fh:
            start = fh.seek(0, os.SEEK_END)
            try:
                while view:
                    view = view[fh.write(view):]
            except OSError:
                with contextlib.suppress(OSError):
                    fh.truncate(start)
                raise
    except OSError as exc:
        raise FileWriteError(f"{p}: cannot append ({exc.strerror or type(exc).__name__})") from None
