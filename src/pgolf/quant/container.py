"""The artifact container: a versioned, self-describing, pickle-free container of the quantized model (docs/DESIGN.md#artifact-format).

File layout (all integers little-endian):

    offset  size  field
    0       8     magic b"PGOLFART"
    8       2     format version (u16) = pgolf.ARTIFACT_FORMAT_VERSION
    10      4     manifest length M (u32)
    14      8     payload length P (u64)
    22      32    sha256 over bytes [0, 22) + manifest + payload (so a flipped bit ANYWHERE fails the check:
                  the header fields, the manifest and the payload are all covered; only the digest itself
                  is not, and a flip there mismatches the recomputed digest)
    54      M     manifest: UTF-8 JSON (below)
    54+M    P     payload: the raw tensor bytes compressed with the manifest's compressor

The file is exactly 54 + M + P bytes. The manifest holds everything needed to rebuild the model:

    {"format": "pgolf-artifact", "format_version": 1, "pgolf_version": ..., "compressor": "brotli",
     "raw_bytes": <decompressed payload length>, "model": <ModelConfig as a dict>,
     "schemes": {role: [schemes used]}, "quant": <QuantConfig dict or {}>,
     "tensors": [{"name", "role", "shape", "scheme", "bits",
                  "parts": [{"kind": "q"|"scale"|"values", "dtype": "int8"|"float16", "shape",
                             "encoding": "int8"|"int6p"|"raw", "shuffle": 1|2, "offset", "length"}]}]}

Schemes: "fp16" (passthrough: values), or "<method>_int<b>" (per-row symmetric b-bit grid: q, scale)
with method gptq | rtn (matrices) or pctl | sdclip (tables: one clip per row). Q parts come first in the
payload, then the fp16 scales, then fp16 passthrough values (like with like, for the compressor); fp16
parts are byte-shuffled with stride 2 (low bytes, then high bytes).

Reading never unpickles, checks every length and offset against the file size and the declared
payload size before allocating, verifies the digest before parsing the manifest, decompresses with an
output bound equal to the declared size, refuses NaN/Inf in fp16 values and scales, and reports any
problem as one `ArtifactError` line naming the file. `open_artifact` stops before decompression (the
manifest alone: what `pgolf.quant.artifact` checks against the model config before anything is
inflated or built); `read_artifact` = `open_artifact` + `decode_payload`.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import math
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pgolf import ARTIFACT_FORMAT_VERSION, __version__
from pgolf.errors import PgolfError
from pgolf.files import atomic_write_bytes
from pgolf.quant.codecs import COMPRESSORS, codec_errors, compress_best, decompress
from pgolf.quant.grid import qmax_for
from pgolf.quant.pack import (
    byte_shuffle,
    byte_unshuffle,
    from_int8_plane,
    int8_plane,
    pack_int6,
    packed_int6_nbytes,
    unpack_int6,
)
from pgolf.quant.schemes import QTensor, scheme_bits

MAGIC = b"PGOLFART"
_FIXED = struct.Struct("<8sHIQ")  # magic, version, manifest length, payload length
_DIGEST = 32
HEADER_BYTES = _FIXED.size + _DIGEST  # 54
MAX_MANIFEST_BYTES = 64 * 2**20
MAX_RAW_BYTES = 2**31
_DTYPES = {"int8": np.dtype("i1"), "float16": np.dtype("<f2")}


class ArtifactError(PgolfError, ValueError):
    """An artifact that cannot be trusted or read; the message is one line naming the file and problem."""


def artifact_error(path: Any, problem: str) -> ArtifactError:
    return ArtifactError(f"{path}: {problem}")



# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def _np(t: Any) -> np.ndarray:
    return t.detach().cpu().numpy() if isinstance(t, Tensor) else np.asarray(t)


def _encode_parts(name: str, entry: QTensor, layout: str) -> tuple[list[tuple[dict, bytes]], int | None, list[int]]:
    """One stored tensor -> ([(part meta without offset, raw bytes)], bits, logical shape)."""
    entry = QTensor.of(entry)
    scheme = entry.scheme
    bits = scheme_bits(scheme)
    if bits is None:
        if entry.scale is not None:
            raise ValueError(f"{name}: scheme fp16 takes one array")
        v = _np(entry.data).astype("<f2")
        meta = {"kind": "values", "dtype": "float16", "shape": list(v.shape), "encoding": "raw", "shuffle": 2}
        return [(meta, byte_shuffle(v.tobytes(), 2).tobytes())], None, list(v.shape)
    if entry.scale is None:
        raise ValueError(f"{name}: scheme {scheme} takes (Q, scales)")
    q = _np(entry.data)
    s = _np(entry.scale).astype("<f2")
    if q.ndim != 2 or s.shape != (q.shape[0],):
        raise ValueError(f"{name}: Q must be (rows, cols) and scales (rows,), got {q.shape} and {s.shape}")
    qmax = qmax_for(bits)
    if q.size and (int(q.min()) < -qmax or int(q.max()) > qmax):
        raise ValueError(f"{name}: Q outside [-{qmax}, {qmax}] for {scheme}")
    if layout == "int6p" and bits <= 6:
        qmeta = {"kind": "q", "dtype": "int8", "shape": list(q.shape), "encoding": "int6p", "shuffle": 1}
        qbytes = pack_int6(q).tobytes()
    elif layout in ("int8", "int6p"):
        qmeta = {"kind": "q", "dtype": "int8", "shape": list(q.shape), "encoding": "int8", "shuffle": 1}
        qbytes = int8_plane(q).tobytes()
    else:
        raise ValueError(f"layout must be 'int8' or 'int6p', got {layout!r}")
    smeta = {"kind": "scale", "dtype": "float16", "shape": list(s.shape), "encoding": "raw", "shuffle": 2}
    return [(qmeta, qbytes), (smeta, byte_shuffle(s.tobytes(), 2).tobytes())], bits, list(q.shape)


def build_payload(tensors: Mapping[str, QTensor], layout: str = "int8",
                  roles: Mapping[str, Any] | None = None) -> tuple[list[dict], bytes]:
    """-> (tensor index, raw payload bytes): Q parts, then scales, then fp16 values, in tensor order."""
    index: list[dict] = []
    groups: dict[str, list[tuple[dict, bytes]]] = {"q": [], "scale": [], "values": []}
    for name, entry in tensors.items():
        parts, bits, shape = _encode_parts(name, entry, layout)
        role = None if roles is None else str(roles[name])
        index.append({"name": name, "role": role, "shape": shape, "scheme": QTensor.of(entry).scheme, "bits": bits,
                      "parts": [meta for meta, _ in parts]})
        for meta, blob in parts:
            groups[meta["kind"]].append((meta, blob))
    chunks: list[bytes] = []
    offset = 0
    for kind in ("q", "scale", "values"):
        for meta, blob in groups[kind]:
            meta["offset"], meta["length"] = offset, len(blob)
            chunks.append(blob)
            offset += len(blob)
    return index, b"".join(chunks)


def encode_artifact(model_cfg_dict: Mapping[str, Any], tensors: Mapping[str, QTensor], compressor: str = "auto",
                    *, roles: Mapping[str, Any] | None = None, quant_cfg_dict: Mapping[str, Any] | None = None,
                    layout: str = "int8", extra: Mapping[str, Any] | None = None,
                    compressed: tuple[str, bytes, dict[str, int]] | None = None) -> bytes:
    """The artifact file's bytes (see the module docstring); `write_artifact` puts them on disk.

    roles: {tensor name: role} (recorded per tensor and summarized as role -> schemes); layout: how Q is
    laid out before compression, "int8" planes or "int6p" (4 values in 3 bytes for bits <= 6); extra:
    JSON-able facts recorded under manifest["extra"] (e.g. the pruning summary); compressed: the
    `compress_best` result for exactly these tensors and layout, when the caller already has it (a
    record-size compression takes tens of seconds).
    """
    index, raw = build_payload(tensors, layout, roles)
    name, blob, sizes = compressed if compressed is not None else compress_best(raw, compressor)
    schemes: dict[str, list[str]] = {}
    for t in index:
        if t["role"] is not None:
            schemes.setdefault(t["role"], [])
            if t["scheme"] not in schemes[t["role"]]:
                schemes[t["role"]].append(t["scheme"])
    manifest = {
        "format": "pgolf-artifact", "format_version": ARTIFACT_FORMAT_VERSION, "pgolf_version": __version__,
        "compressor": name, "compressed_sizes": sizes, "raw_bytes": len(raw), "layout": layout,
        "model": dict(model_cfg_dict), "schemes": schemes, "quant": dict(quant_cfg_dict or {}),
        "tensors": index,
    }
    if extra:
        manifest["extra"] = dict(extra)
    mbytes = json.dumps(manifest, separators=(",", ":"), sort_keys=True).encode()
    fixed = _FIXED.pack(MAGIC, ARTIFACT_FORMAT_VERSION, len(mbytes), len(blob))
    digest = hashlib.sha256(fixed + mbytes + blob).digest()
    return fixed + digest + mbytes + blob


def write_artifact(path: str | os.PathLike, model_cfg_dict: Mapping[str, Any], tensors: Mapping[str, QTensor],
                   compressor: str = "auto", *, roles: Mapping[str, Any] | None = None,
                   quant_cfg_dict: Mapping[str, Any] | None = None, layout: str = "int8",
                   extra: Mapping[str, Any] | None = None) -> int:
    """Write the artifact atomically (temp file, fsync, rename); returns the number of bytes written."""
    data = encode_artifact(model_cfg_dict, tensors, compressor, roles=roles, quant_cfg_dict=quant_cfg_dict,
                           layout=layout, extra=extra)
    atomic_write_bytes(path, data)
    return len(data)


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def _check_int(v: Any, what: str, lo: int = 0, hi: int = MAX_RAW_BYTES) -> int:
    if type(v) is not int or not lo <= v <= hi:
        raise ValueError(f"{what} is not an integer in [{lo}, {hi}]")
    return v


def _check_shape(v: Any, what: str) -> tuple[int, ...]:
    if not isinstance(v, list) or len(v) > 8:
        raise ValueError(f"{what} is not a shape")
    return tuple(_check_int(d, what) for d in v)


def _part_nbytes(part: dict, shape: tuple[int, ...]) -> int:
    n = math.prod(shape)
    if part["encoding"] == "int6p":
        return packed_int6_nbytes(n)
    return n * _DTYPES[part["dtype"]].itemsize


def _validate_manifest(m: Any) -> None:
    """Structure and bounds of a parsed manifest (ValueError/KeyError/TypeError on anything off)."""
    if not isinstance(m, dict) or m.get("format") != "pgolf-artifact":
        raise ValueError("manifest is not a pgolf-artifact manifest")
    if m["compressor"] not in COMPRESSORS:
        raise ValueError(f"unknown compressor {m['compressor']!r}")
    raw = _check_int(m["raw_bytes"], "raw_bytes")
    if not isinstance(m["model"], dict) or not isinstance(m["tensors"], list):
        raise ValueError("manifest model/tensors have the wrong type")
    spans = []
    names = set()
    for t in m["tensors"]:
        name = t["name"]
        if not isinstance(name, str) or name in names:
            raise ValueError(f"bad or duplicate tensor name {name!r}")
        names.add(name)
        shape = _check_shape(t["shape"], f"{name}.shape")
        bits = scheme_bits(t["scheme"])
        if t["bits"] != bits or type(t["bits"]) is not type(bits):
            raise ValueError(f"{name}: bits {t['bits']} do not match scheme {t['scheme']}")
        parts = t["parts"]
        want = ["values"] if bits is None else ["q", "scale"]
        if not isinstance(parts, list) or [p["kind"] for p in parts] != want:
            raise ValueError(f"{name}: parts must be {want}")
        for p in parts:
            pshape = _check_shape(p["shape"], f"{name}.{p['kind']}.shape")
            dtype, enc = p["dtype"], p["encoding"]
            ok = {"values": ("float16", ("raw",)), "scale": ("float16", ("raw",)),
                  "q": ("int8", ("int8", "int6p"))}[p["kind"]]
            if dtype != ok[0] or enc not in ok[1] or (enc == "int6p" and bits is not None and bits > 6):
                raise ValueError(f"{name}.{p['kind']}: dtype/encoding {dtype}/{enc} not allowed")
            if type(p["shuffle"]) is not int or p["shuffle"] != (2 if dtype == "float16" else 1):
                raise ValueError(f"{name}.{p['kind']}: unexpected shuffle {p['shuffle']!r}")
            off = _check_int(p["offset"], f"{name}.{p['kind']}.offset")
            length = _check_int(p["length"], f"{name}.{p['kind']}.length")
            if length != _part_nbytes(p, pshape):
                raise ValueError(f"{name}.{p['kind']}: length {length} does not match its shape and encoding")
            spans.append((off, length))
        if bits is None and tuple(parts[0]["shape"]) != shape:
            raise ValueError(f"{name}: values shape differs from the tensor shape")
        if bits is not None:
            qs, ss = tuple(parts[0]["shape"]), tuple(parts[1]["shape"])
            if len(qs) != 2 or qs != shape or ss != (qs[0],):
                raise ValueError(f"{name}: Q must be (rows, cols) = shape and scales (rows,)")
    pos = 0
    for off, length in sorted(spans):
        if off != pos:
            raise ValueError("tensor parts do not tile the payload")
        pos += length
    if pos != raw:
        raise ValueError(f"tensor parts cover {pos} bytes, raw_bytes says {raw}")


def _decode(t: dict, raw: bytes) -> QTensor:
    out: list[Any] = []
    for p in t["parts"]:
        shape = tuple(p["shape"])
        buf = np.frombuffer(raw, dtype=np.uint8, count=p["length"], offset=p["offset"])
        if p["shuffle"] != 1:
            buf = byte_unshuffle(buf, p["shuffle"])
        if p["encoding"] == "int6p":
            arr = unpack_int6(buf, math.prod(shape)).reshape(shape)
        elif p["dtype"] == "int8":
            arr = from_int8_plane(buf, shape)
        else:
            arr = buf.view(_DTYPES[p["dtype"]]).reshape(shape).astype(np.float16)
            if not np.isfinite(arr).all():
                raise ValueError(f"{t['name']}: NaN or Inf in its fp16 {'scales' if p['kind'] == 'scale' else 'values'}")
        out.append(torch.from_numpy(np.ascontiguousarray(arr)))
    if t["bits"] is not None:
        qmax = qmax_for(t["bits"])
        Q = out[0]
        if Q.numel() and (int(Q.min()) < -qmax or int(Q.max()) > qmax):  # not abs(): int8 -128 stays negative
            raise ValueError(f"{t['name']}: Q outside [-{qmax}, {qmax}]")
    return QTensor(t["scheme"], *out)


def open_artifact(path: str | os.PathLike) -> tuple[dict, bytes]:
    """-> (manifest, compressed payload): header, sizes and digest checked, the manifest parsed and its
    structure validated, nothing decompressed; ArtifactError on anything untrustworthy."""
    path = Path(path)
    try:
        fh = open(path, "rb")
    except OSError as e:
        raise artifact_error(path, f"cannot open ({e.strerror})") from None
    with fh:
        size = os.fstat(fh.fileno()).st_size
        head = fh.read(HEADER_BYTES)
        if len(head) < HEADER_BYTES:
            raise artifact_error(path, f"truncated: {len(head)} bytes, the header alone needs {HEADER_BYTES}")
        magic, version, mlen, plen = _FIXED.unpack_from(head)
        digest = head[_FIXED.size:]
        if magic != MAGIC:
            raise artifact_error(path, "not a pgolf artifact (bad magic)")
        if version != ARTIFACT_FORMAT_VERSION:
            raise artifact_error(path, f"format version {version}, this pgolf reads version {ARTIFACT_FORMAT_VERSION}")
        if mlen > MAX_MANIFEST_BYTES:
            raise artifact_error(path, f"manifest length {mlen} exceeds the {MAX_MANIFEST_BYTES}-byte limit")
        if HEADER_BYTES + mlen + plen != size:
            what = "truncated" if HEADER_BYTES + mlen + plen > size else "trailing bytes"
            raise artifact_error(path, f"{what}: header declares {HEADER_BYTES + mlen + plen} bytes, file has {size}")
        body = fh.read(mlen + plen)
    if len(body) != mlen + plen:
        raise artifact_error(path, "truncated while reading (file changed?)")
    if hashlib.sha256(head[:_FIXED.size] + body).digest() != digest:
        raise artifact_error(path, "checksum mismatch: the file is corrupted")
    try:
        manifest = json.loads(body[:mlen].decode("utf-8"))
        _validate_manifest(manifest)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise artifact_error(path, f"invalid manifest: {e}") from None
    return manifest, body[mlen:]


def decode_payload(path: str | os.PathLike, manifest: dict, payload: bytes) -> dict[str, QTensor]:
    """The tensors of an `open_artifact` result: decompressed (bounded by raw_bytes) and decoded."""
    try:
        raw = decompress(payload, manifest["compressor"], manifest["raw_bytes"])
    except (ValueError, lzma.LZMAError, MemoryError, *codec_errors()) as e:
        raise artifact_error(path, f"payload does not decompress: {e}") from None
    try:
        return {t["name"]: _decode(t, raw) for t in manifest["tensors"]}
    except ValueError as e:
        raise artifact_error(path, f"invalid tensor data: {e}") from None


def read_artifact(path: str | os.PathLike) -> tuple[dict, dict[str, QTensor]]:
    """-> (manifest, {name: QTensor}) with torch tensors; ArtifactError on anything untrustworthy. Any
    tensors, any model section: `pgolf.quant.artifact.load_artifact` also checks them against the model."""
    manifest, payload = open_artifact(path)
    return manifest, decode_payload(path, manifest, payload)


def artifact_bytes(path: str | os.PathLike) -> int:
    """Counted model bytes of an artifact: its whole file size (header + manifest + payload)."""
    return os.path.getsize(path)
