"""Reading documents: JSONL with a `text` field, plain or xz / gzip / bzip2 compressed.

`"default"` names the corpus embedded in the package (`pgolf/corpus/default.jsonl.xz`; its first
143 documents are the validation split). Compression is recognized by the file's first bytes (a name
ending in .xz/.gz/.bz2 must match them). Lines are read as bytes, one at a time, so memory follows the
longest document, not the file. Every problem raises `DocsError`, one line naming the file, the line
number and what is wrong: bytes that are not UTF-8, a NUL byte (binary data), invalid JSON, a line that
is not an object with a string "text", a lone surrogate (a `\\ud800` escape UTF-8 cannot encode), a line
over `MAX_LINE_BYTES`, compressed data that is truncated or corrupt, and a file with no document.
Blank lines are skipped; a UTF-8 byte-order mark at the start of a file is allowed.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import lzma
import os
import re
import zlib
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import IO

from pgolf.errors import PgolfError

DEFAULT_CORPUS = "default"
DEFAULT_CORPUS_VAL_DOCS = 143
MAX_LINE_BYTES = 256 * 2**20
"""The longest JSONL line (one document) read: a longer one is refused rather than read into memory."""
READ_PIECE = 2**20

_SIGNATURES = {b"\xfd7zXZ\x00": "xz", b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\x28\xb5\x2f\xfd": "zstd",
               b"PK\x03\x04": "zip"}
_SUFFIXES = {".xz": "xz", ".gz": "gzip", ".bz2": "bzip2"}
_OPENERS = {"xz": lzma.open, "lzma": lzma.open, "gzip": gzip.open, "bzip2": bz2.open}
_BOM = b"\xef\xbb\xbf"
_SURROGATE = re.compile("[\ud800-\udfff]")
_JSON_KIND = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
              bool: "a boolean", type(None): "null"}


class DocsError(PgolfError, ValueError):
    """Documents that cannot be read; one line naming the file (and line)."""


def default_corpus_path() -> Path:
    return Path(str(resources.files("pgolf") / "corpus" / "default.jsonl.xz"))


def resolve_docs_path(name: str | os.PathLike) -> Path:
    if str(name) == DEFAULT_CORPUS:
        return default_corpus_path()
    p = Path(name)
    if p.is_dir():
        raise DocsError(f"{p}: is a directory, not a documents file")
    if not p.is_file():
        raise DocsError(f"{p}: documents file not found")
    return p


def _open_binary(path: Path) -> IO[bytes]:
    """The file's decompressed bytes; the compression is the one its first bytes announce."""
    try:
        with path.open("rb") as fh:
            head = fh.read(6)
    except OSError as exc:
        raise DocsError(f"{path}: cannot read ({exc.strerror or type(exc).__name__})") from None
    kind = next((k for sig, k in _SIGNATURES.items() if head.startswith(sig)), None)
    named = _SUFFIXES.get(path.suffix.lower())
    if named is not None and kind != named:
        what = f"it holds {kind} data" if kind else ("the file is empty" if not head else
                                                     f"it does not start with the {named} signature")
        raise DocsError(f"{path}: not {named} data (the name ends in {path.suffix}, but {what})")
    if kind in ("zstd", "zip"):
        raise DocsError(f"{path}: {kind}-compressed; only plain, xz, gzip and bzip2 JSONL are read")
    if kind is None and path.suffix.lower() == ".lzma":
        kind = "lzma"
    return _OPENERS[kind](path, "rb") if kind else path.open("rb")


def _read_line(fh: IO[bytes], path: Path, lineno: int) -> bytes:
    """One line (b"" at the end), read in pieces: a NUL byte or an over-long line fails before the rest is read."""
    pieces = [fh.readline(READ_PIECE)]
    size = len(pieces[0])
    while pieces[-1] and not pieces[-1].endswith(b"\n") and b"\x00" not in pieces[-1]:
        if size > MAX_LINE_BYTES:
            raise DocsError(f"{path}:{lineno}: line longer than {MAX_LINE_BYTES // 2**20} MiB (one document per "
                            f"line: is this JSONL?)")
        pieces.append(fh.readline(READ_PIECE))
        size += len(pieces[-1])
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def _decode(raw: bytes, path: Path, lineno: int) -> str:
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise DocsError(f"{path}:{lineno}: not JSON text: NUL byte at byte {nul + 1} of the line (binary data?)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DocsError(f"{path}:{lineno}: not UTF-8: byte 0x{raw[exc.start]:02x} at byte {exc.start + 1} of the "
                        f"line ({exc.reason})") from None


def _parse(line: str, path: Path, lineno: int) -> str:
    """The document's text, or DocsError naming what is wrong with the line."""
    where = f"{path}:{lineno}"
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        hint = " (lines separated by CR only? JSONL lines end in LF)" if exc.msg == "Extra data" and "\r" in line else ""
        raise DocsError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno}){hint}") from None
    except RecursionError:
        raise DocsError(f"{where}: JSON nested too deeply to read") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise DocsError(f"{where}: cannot read the JSON ({str(exc).splitlines()[0]})") from None
    expected = "expected a JSON object with a string 'text' field"
    if not isinstance(obj, dict):
        raise DocsError(f"{where}: {expected}, got {_JSON_KIND.get(type(obj), type(obj).__name__)}")
    if "text" not in obj:
        raise DocsError(f"{where}: {expected}, got an object without 'text'")
    text = obj["text"]
    if not isinstance(text, str):
        raise DocsError(f"{where}: {expected}; 'text' is {_JSON_KIND.get(type(text), type(text).__name__)}")
    if not text.isascii() and (m := _SURROGATE.search(text)) is not None:
        raise DocsError(f"{where}: 'text' holds a lone surrogate U+{ord(m.group()):04X} at character {m.start()} "
                        f"(a \\u escape of half a pair), which UTF-8 cannot encode")
    return text


def _read_error(exc: BaseException, path: Path, lineno: int) -> DocsError:
    where = f"{path}:{lineno}"
    if isinstance(exc, EOFError):
        return DocsError(f"{where}: the compressed data ends early (truncated file?)")
    if isinstance(exc, (lzma.LZMAError, zlib.error)) or (isinstance(exc, OSError) and exc.errno is None):
        return DocsError(f"{where}: the compressed data is damaged ({type(exc).__name__}: {exc})")
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else f"{type(exc).__name__}: {exc}"
    return DocsError(f"{where}: cannot read ({reason})")


def iter_file(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of each document of one file; DocsError at the first problem, or if it holds none."""
    found = False
    with _open_binary(path) as fh:
        lineno = 0
        while True:
            lineno += 1
            try:
                raw = _read_line(fh, path, lineno)
            except (EOFError, OSError, lzma.LZMAError, zlib.error) as exc:
                raise _read_error(exc, path, lineno) from None
            if not raw:
                break
            if lineno == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM):]
            line = _decode(raw, path, lineno)
            raw = b""  # drop the bytes before parsing: a large document is held twice, not three times
            if not line.strip():
                continue
            text = _parse(line, path, lineno)
            line = ""
            found = True
            yield lineno, text
    if not found:
        raise DocsError(f"{path}: no documents (the file is empty or holds only blank lines)")


def iter_docs(paths: Sequence[str | os.PathLike]) -> Iterator[str]:
    """Yield each document's text, files in the given order, lines in file order."""
    for name in paths:
        for _, text in iter_file(resolve_docs_path(name)):
            yield text


def doc_hash(text: str) -> str:
    """64-bit document fingerprint (16 hex chars of sha256 of the UTF-8 text)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
