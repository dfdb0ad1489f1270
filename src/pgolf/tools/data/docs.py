"""Reading documents: JSONL with a `text` field, plain or .xz / .gz / .bz2 compressed.

`"default"` names the corpus embedded in the package (`pgolf/corpus/default.jsonl.xz`; its first
143 documents are the validation split). Errors name the file and line.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path

from pgolf.errors import PgolfError

DEFAULT_CORPUS = "default"
DEFAULT_CORPUS_VAL_DOCS = 143


class DocsError(PgolfError, ValueError):
    """Documents that cannot be read; one line naming the file (and line)."""


def default_corpus_path() -> Path:
    return Path(str(resources.files("pgolf") / "corpus" / "default.jsonl.xz"))


def resolve_docs_path(name: str | os.PathLike) -> Path:
    if str(name) == DEFAULT_CORPUS:
        return default_corpus_path()
    p = Path(name)
    if not p.is_file():
        raise DocsError(f"{p}: documents file not found")
    return p


def _open_text(path: Path) -> io.TextIOBase:
    suffix = path.suffix.lower()
    opener = {".xz": lzma.open, ".lzma": lzma.open, ".gz": gzip.open, ".bz2": bz2.open}.get(suffix)
    if opener is None:
        return path.open("r", encoding="utf-8")
    return opener(path, "rt", encoding="utf-8")


def iter_docs(paths: Sequence[str | os.PathLike]) -> Iterator[str]:
    """Yield each document's text, files in the given order, lines in file order."""
    for name in paths:
        path = resolve_docs_path(name)
        try:
            with _open_text(path) as fh:
                for lineno, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise DocsError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
                    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                        raise DocsError(f"{path}:{lineno}: expected a JSON object with a string 'text' field")
                    yield obj["text"]
        except (lzma.LZMAError, OSError, EOFError, UnicodeDecodeError) as exc:
            if isinstance(exc, DocsError):
                raise
            raise DocsError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from None


def doc_hash(text: str) -> str:
    """64-bit document fingerprint (16 hex chars of sha256 of the UTF-8 text)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
