"""The run directory's JSON records read back: `read_json`, `read_jsonl`, the typed records (`TrainSummary`,
`QuantSummary`, `Results`), the file hashes provenance compares (`file_sha256`) and the one-line errors
(`RunDirError`, `StaleError`). The package `pgolf.rundir` re-exports everything here."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

from pgolf.config import SCORE_MODES
from pgolf.errors import PgolfError
from pgolf.files import problem


class RunDirError(PgolfError, ValueError):
    """A run directory (or one of its files) that cannot be used as it is; one line naming the file."""


class StaleError(RunDirError):
    """An output made from other inputs (another config, other weights, another artifact) than the run's."""


def read_json(path: Path, what: str, required: bool = True) -> Any:
    """The parsed JSON of `path`; None when absent and not required. One-line RunDirError otherwise."""
    if not path.is_file():
        if required:
            raise RunDirError(f"{path}: missing ({what})")
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise RunDirError(f"{path}: not valid JSON ({problem(e)})") from None
    except OSError as e:
        raise RunDirError(f"{path}: unreadable ({e.strerror or type(e).__name__})") from None


def read_jsonl(path: Path) -> tuple[list[dict], int]:
    """A .jsonl file -> (its dict records, number of unreadable lines skipped, e.g. a torn last line)."""
    if not path.is_file():
        return [], 0
    out, bad = [], 0
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise RunDirError(f"{path}: unreadable ({e.strerror or type(e).__name__})") from None
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            bad += 1
            continue
        if isinstance(rec, dict):
            out.append(rec)
        else:
            bad += 1
    return out, bad


def number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


_TYPES = {"int": lambda x: isinstance(x, int) and not isinstance(x, bool), "float": number,
          "str": lambda x: isinstance(x, str), "bool": lambda x: isinstance(x, bool),
          "dict": lambda x: isinstance(x, dict)}


def _typed(annotation: str, x: Any) -> bool:
    """Whether JSON value x has the field's annotated type ("float | None", "dict", ...; floats take ints)."""
    kinds = [a.strip() for a in str(annotation).split("|")]
    return (x is None and "None" in kinds) or any(_TYPES.get(k, lambda _: True)(x) for k in kinds if k != "None")


class _Record:
    """A typed JSON record: the dataclass fields are its keys, in file order; a field with a default (the
    provenance fields) may be absent (a record written before it existed)."""

    REQUIRED_NUMBERS: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Any, path: Path):
        if not isinstance(d, dict):
            raise RunDirError(f"{path}: expected a JSON object")
        fs = fields(cls)
        missing = [f.name for f in fs if f.name not in d and f.default is MISSING]
        if missing:
            raise RunDirError(f"{path}: missing key(s) {', '.join(missing)}")
        bad = [k for k in cls.REQUIRED_NUMBERS if not number(d[k])]
        if bad:
            raise RunDirError(f"{path}: {', '.join(bad)} must be numbers")
        wrong = [f"{f.name} ({f.type})" for f in fs if f.name in d and not _typed(f.type, d[f.name])]
        if wrong:
            raise RunDirError(f"{path}: wrong type for {', '.join(wrong)}")
        return cls(**{f.name: d[f.name] for f in fs if f.name in d})


@dataclass(frozen=True)
class TrainSummary(_Record):
    steps: int
    train_seconds: float
    stopped_by: str
    step_avg_ms: float
    tokens_per_second: float
    final_val: dict
    final_val_raw: dict
    ema: bool
    world_size: int
    grad_accum: int
    calib_seconds: float
    charged_seconds: float
    config_hash: str | None = None
    weights_sha256: str | None = None  # model_final.pt as written
    REQUIRED_NUMBERS = ("steps", "train_seconds", "charged_seconds")


@dataclass(frozen=True)
class QuantSummary(_Record):
    artifact: str
    artifact_bytes: int
    code_bytes: int
    total_bytes: int
    limit_bytes: int
    within_limit: bool
    method: str
    matrix_bits: int
    embed_bits: int
    clip: str
    layout: str
    compressor: str
    compressed_sizes: dict
    raw_payload_bytes: int
    entropy_bytes: dict
    payload_over_entropy: float | None
    calibration: dict
    pruning: dict
    quantize_seconds: float
    serialize_seconds: float
    config_hash: str | None = None  # the config it was quantized with (quantize --set may change quant.*)
    weights_sha256: str | None = None  # the model_final.pt it was made from
    artifact_sha256: str | None = None  # the artifact.pgolf it describes
    REQUIRED_NUMBERS = ("artifact_bytes", "code_bytes", "total_bytes", "limit_bytes")


@dataclass(frozen=True)
class Results(_Record):
    preset: str
    seed: int
    config_hash: str
    world_size: int
    steps: int
    train_seconds: float
    stopped_by: str
    artifact_bytes: int
    code_bytes: int
    total_bytes: int
    within_limit: bool
    compressor: str
    modes: dict
    compliant: bool
    wall_seconds: float
    weights_sha256: str | None = None  # the model_final.pt the artifact was made from
    artifact_sha256: str | None = None  # the artifact.pgolf that was scored
    REQUIRED_NUMBERS = ("steps", "total_bytes", "artifact_bytes", "code_bytes")

    @classmethod
    def from_json(cls, d: Any, path: Path) -> Results:
        r = super().from_json(d, path)
        if not isinstance(r.modes, dict) or not r.modes:
            raise RunDirError(f"{path}: no scored modes ('modes' is missing or empty)")
        unknown = [m for m in r.modes if m not in SCORE_MODES]
        if unknown:
            raise RunDirError(f"{path}: unknown mode(s) {unknown}")
        for m, v in r.modes.items():
            if not isinstance(v, dict) or not all(number(v.get(k)) for k in ("val_loss", "val_bpb")):
                raise RunDirError(f"{path}: mode {m!r} has no numeric val_loss and val_bpb")
            if not all(math.isfinite(v[k]) for k in ("val_loss", "val_bpb")):
                raise RunDirError(f"{path}: mode {m!r} has a non-finite val_loss or val_bpb")
        return r


_SHA_CACHE: dict[tuple, str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, remembered per (path, inode, size, mtime) so a record is hashed once."""
    try:
        st = path.stat()
        key = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
        if key not in _SHA_CACHE:
            h = hashlib.sha256()
            with path.open("rb") as fh:
                while chunk := fh.read(1 << 22):
                    h.update(chunk)
            _SHA_CACHE[key] = h.hexdigest()
    except OSError as e:
        raise RunDirError(f"{path}: unreadable ({e.strerror or type(e).__name__})") from None
    return _SHA_CACHE[key]


def json_kind(path: Path, d: Any, kind: type, what: str) -> Any:
    if d is not None and not isinstance(d, kind):
        raise RunDirError(f"{path}: expected a JSON {'object' if kind is dict else 'list'} ({what})")
    return d
