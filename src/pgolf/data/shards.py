"""The challenge's token shard format (docs/DESIGN.md#data-shards), read through memory maps.

Layout of one `.bin` shard::

    header  256 x int32 little-endian   [0] = 20240520 (magic), [1] = 1 (version), [2] = N tokens
    payload N x uint16 little-endian    token ids

A shard is accepted only if magic, version and file size (1024 + 2N bytes) agree, and, when a
vocabulary size is given, every token id is below it. Every problem raises `ShardError`, whose
message names the file, the byte offset and what is wrong.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from pgolf.errors import PgolfError
from pgolf.files import atomic_open

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
TOKEN_DTYPE = np.dtype("<u2")
SPLITS = ("train", "val")
WRITE_PIECE = 2**24
"""write_shard writes the tokens from their array in pieces of this many bytes (no copy of the payload)."""


class ShardError(PgolfError, ValueError):
    """A shard that cannot be used; `str()` is a one-line message naming file, offset and problem."""

    def __init__(self, path: str | os.PathLike, problem: str, offset: int | None = None):
        self.path = str(path)
        self.problem = problem
        self.offset = offset
        where = f" (byte offset {offset})" if offset is not None else ""
        super().__init__(f"{self.path}{where}: {problem}")


def shard_name(split: str, index: int) -> str:
    """The challenge's file name: fineweb_{train,val}_NNNNNN.bin."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return f"fineweb_{split}_{index:06d}.bin"


def read_header(path: str | os.PathLike) -> int:
    """Validate a shard's header and size; return its token count."""
    p = Path(path)
    try:
        size = p.stat().st_size
        with p.open("rb") as fh:
            raw = fh.read(HEADER_BYTES)
    except FileNotFoundError:
        raise ShardError(p, "file not found") from None
    except IsADirectoryError:
        raise ShardError(p, "is a directory, not a shard") from None
    except OSError as exc:
        raise ShardError(p, f"unreadable ({exc.strerror or type(exc).__name__})") from None
    if len(raw) < HEADER_BYTES:
        raise ShardError(p, f"truncated header: file has {size} bytes, a shard header needs {HEADER_BYTES}", 0)
    header = np.frombuffer(raw, dtype="<i4")
    if int(header[0]) != MAGIC:
        raise ShardError(p, f"bad magic {int(header[0])} (expected {MAGIC}); not a challenge shard", 0)
    if int(header[1]) != VERSION:
        raise ShardError(p, f"unsupported version {int(header[1])} (expected {VERSION})", 4)
    n = int(header[2])
    if n < 0:
        raise ShardError(p, f"negative token count {n}", 8)
    expected = HEADER_BYTES + 2 * n
    if size != expected:
        kind = "truncated" if size < expected else "trailing bytes"
        raise ShardError(p, f"{kind}: header says {n} tokens ({expected} bytes), file has {size} bytes",
                         min(size, expected))
    return n


def check_token_range(tokens: np.ndarray, vocab_size: int, path: str | os.PathLike,
                      first_index: int = 0, chunk: int = 1 << 24) -> None:
    """Raise ShardError at the first token id >= vocab_size (scans in chunks to bound memory)."""
    for start in range(0, len(tokens), chunk):
        part = tokens[start:start + chunk]
        if len(part) and int(part.max()) >= vocab_size:
            i = start + int(np.argmax(part >= vocab_size))
            raise ShardError(path, f"token id {int(part[i - start])} at token index {first_index + i} is out of "
                                   f"range for vocab size {vocab_size}", HEADER_BYTES + 2 * (first_index + i))


def open_shard(path: str | os.PathLike, vocab_size: int | None = None) -> np.ndarray:
    """Read-only memory map of a shard's tokens (uint16), validated; range-checked if vocab_size given."""
    n = read_header(path)
    if n == 0:
        tokens = np.zeros((0,), dtype=TOKEN_DTYPE)
    else:
        try:
            tokens = np.memmap(path, dtype=TOKEN_DTYPE, mode="r", offset=HEADER_BYTES, shape=(n,))
        except (OSError, ValueError) as exc:  # e.g. the file shrank since its header was read
            raise ShardError(path, f"cannot map its tokens ({type(exc).__name__}: {exc})") from None
    if vocab_size is not None:
        check_token_range(tokens, vocab_size, path)
    return tokens


def write_shard(path: str | os.PathLike, tokens: np.ndarray) -> str:
    """Write a shard atomically (pgolf.files: temp file, fsync, rename; a full disk is one FileWriteError line
    and no temp file); return the sha256 of its bytes. The tokens are written from their array (no copy when
    they already are uint16)."""
    p = Path(path)
    toks = np.asarray(tokens)
    if toks.size and (toks.min() < 0 or toks.max() >= 1 << 16):
        raise ValueError(f"{p}: token ids must fit uint16")
    if len(toks) >= 2**31:
        raise ValueError(f"{p}: {len(toks)} tokens exceed the int32 header field")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = MAGIC, VERSION, len(toks)
    payload = memoryview(np.ascontiguousarray(toks, dtype=TOKEN_DTYPE)).cast("B")  # no copy of uint16 tokens
    h = hashlib.sha256()
    h.update(header.tobytes())
    h.update(payload)
    p.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(p) as fh:
        fh.write(header.tobytes())
        for start in range(0, len(payload), WRITE_PIECE):  # a write of at most WRITE_PIECE bytes at a time
            fh.write(payload[start:start + WRITE_PIECE])
    return h.hexdigest()


def sha256_file(path: str | os.PathLike, bufsize: int = 1 << 22) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(bufsize):
                h.update(chunk)
    except OSError as exc:
        raise ShardError(path, f"unreadable ({exc.strerror or type(exc).__name__})") from None
    return h.hexdigest()


def list_shards(directory: str | os.PathLike, split: str) -> list[Path]:
    """The split's shards in sorted (= challenge load) order; an error if there are none."""
    d = Path(directory)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not d.is_dir():
        raise ShardError(d, "data directory not found (expected fineweb_{train,val}_*.bin inside)")
    files = sorted(d.glob(f"fineweb_{split}_*.bin"))
    if not files:
        raise ShardError(d, f"no fineweb_{split}_*.bin shards in this directory")
    return files


def load_val_tokens(directory: str | os.PathLike, vocab_size: int | None = None) -> np.ndarray:
    """The validation stream: every val shard in sorted order, concatenated (as the challenge loads it)."""
    files = list_shards(directory, "val")
    parts = [open_shard(p, vocab_size) for p in files]
    stream = np.concatenate(parts) if len(parts) > 1 else np.array(parts[0])
    if len(stream) < 2:
        raise ShardError(files[0] if len(files) == 1 else directory,
                         f"validation stream has {len(stream)} tokens; at least 2 are needed")
    return stream
