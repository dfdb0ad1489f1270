"""The artifact: a versioned, self-describing, pickle-free container of the quantized model (STACK.md 5.5).

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
output bound equal to the declared size, and reports any problem as one `ArtifactError` line naming
the file.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
import json
import lzma
import math
import os
import re
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pgolf import ARTIFACT_FORMAT_VERSION, __version__
from pgolf.model.roles import Role, role_of, roles_by_name
from pgolf.quant.gptq import gptq_quantize
from pgolf.quant.grid import dequantize, qmax_for, row_clip_quantize, rtn_quantize
from pgolf.quant.pack import (
    byte_shuffle,
    byte_unshuffle,
    from_int8_plane,
    int8_plane,
    pack_int6,
    packed_int6_nbytes,
    unpack_int6,
)

MAGIC = b"PGOLFART"
_FIXED = struct.Struct("<8sHIQ")  # magic, version, manifest length, payload length
_DIGEST = 32
HEADER_BYTES = _FIXED.size + _DIGEST  # 54
MAX_MANIFEST_BYTES = 64 * 2**20
MAX_RAW_BYTES = 2**31
"""Upper bound on the declared decompressed payload (the 16 MB challenge models need ~17 MB)."""
COMPRESSORS = ("lzma", "brotli", "zstd")
RUN_ARTIFACT = "artifact.pgolf"
"""File name of a run directory's artifact (written by `pgolf quantize` / the pipeline)."""


def _optional(module: str):
    """brotli and zstandard are imported lazily: the bundled train_gpt.py needs only torch, numpy,
    sentencepiece and brotli, and a machine without one of them still runs ("auto" skips it; a file
    compressed with it fails with a clear message)."""
    try:  # explicit imports (not importlib) so the bundle's import scan records them as optional
        if module == "brotli":
            import brotli as mod
        else:
            import zstandard as mod
    except ImportError:
        return None
    return mod


_MODULE = {"brotli": "brotli", "zstd": "zstandard"}


def _codec(name: str, reading: bool):
    mod = _optional(_MODULE[name])
    if mod is None:
        if reading:
            raise ValueError(f"this artifact is {name}-compressed; install the '{_MODULE[name]}' package to read it")
        raise ValueError(f"compressor {name} needs the '{_MODULE[name]}' package (pip install {_MODULE[name]})")
    return mod


def _codec_errors() -> tuple[type[BaseException], ...]:
    """The decoding exceptions of the optional codecs that are installed."""
    errs: list[type[BaseException]] = []
    if (b := _optional("brotli")) is not None:
        errs.append(b.error)
    if (z := _optional("zstandard")) is not None:
        errs.append(z.ZstdError)
    return tuple(errs)


def available_compressors() -> tuple[str, ...]:
    return tuple(c for c in COMPRESSORS if c not in _MODULE or _optional(_MODULE[c]) is not None)
_SCHEME_RE = re.compile(r"(gptq|rtn|pctl|sdclip)_int([2-8])")
_DTYPES = {"int8": np.dtype("i1"), "float16": np.dtype("<f2")}

QTensor = tuple
"""One stored tensor: ("fp16", values fp16) or (scheme "<method>_int<b>", Q int8 (rows, cols), scales fp16 (rows,))."""


class ArtifactError(ValueError):
    """An artifact that cannot be trusted or read; the message is one line naming the file and problem."""


def _fail(path: Any, problem: str) -> ArtifactError:
    return ArtifactError(f"{path}: {problem}")


def scheme_bits(scheme: str) -> int | None:
    """Bits of a per-row integer scheme, None for "fp16"; ValueError for an unknown scheme."""
    if scheme == "fp16":
        return None
    m = _SCHEME_RE.fullmatch(scheme)
    if m is None:
        raise ValueError(f"unknown quantization scheme {scheme!r}")
    return int(m.group(2))


# --------------------------------------------------------------------------------------------------
# Compressors
# --------------------------------------------------------------------------------------------------


def compress(raw: bytes, name: str) -> bytes:
    """lzma: xz container, preset 9 | EXTREME (dictionary capped at the input size: a bigger one only
    costs decoder memory); brotli: quality 11, window 2^24; zstd: level 22 (content size in the frame)."""
    if name == "lzma":
        dict_size = min(max(len(raw), 4096), 64 * 2**20)
        filters = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": dict_size}]
        return lzma.compress(raw, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, filters=filters)
    if name == "brotli":
        brotli = _codec("brotli", reading=False)
        return brotli.compress(raw, quality=11, lgwin=24)
    if name == "zstd":
        zstandard = _codec("zstd", reading=False)
        return zstandard.ZstdCompressor(level=22, write_content_size=True).compress(raw)
    raise ValueError(f"unknown compressor {name!r}; choose from {', '.join(COMPRESSORS)} or auto")


def decompress(data: bytes, name: str, raw_bytes: int) -> bytes:
    """Inverse of `compress`, producing at most raw_bytes + 1 bytes; ValueError unless exactly raw_bytes."""
    if name == "lzma":
        # Decoder memory is about the dictionary size; ours never exceeds the payload (see `compress`).
        # The xz header rounds the dictionary up to 2^n or 3 * 2^(n-1) (up to 4/3 of what was asked, e.g.
        # a 26 MB payload declares 32 MiB), and the decoder needs that much: allow twice the size.
        limit = 2 * min(max(raw_bytes, 4096), 64 * 2**20) + 2**20
        d = lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=limit)
        out = d.decompress(data, max_length=raw_bytes + 1)
        if not d.eof or d.unused_data or len(out) != raw_bytes:
            raise ValueError("lzma stream does not decode to the declared payload size")
        return out
    if name == "brotli":
        brotli = _codec("brotli", reading=True)
        d = brotli.Decompressor()
        out = d.process(data, output_buffer_limit=raw_bytes + 1)
        if not d.is_finished() or len(out) != raw_bytes:
            raise ValueError("brotli stream does not decode to the declared payload size")
        return out
    if name == "zstd":
        zstandard = _codec("zstd", reading=True)
        if zstandard.frame_content_size(data) != raw_bytes:
            raise ValueError("zstd frame does not declare the payload size")
        reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=False)
        out = reader.read(raw_bytes + 1)
        if len(out) != raw_bytes:
            raise ValueError("zstd stream does not decode to the declared payload size")
        return out
    raise ValueError(f"unknown compressor {name!r}")


def compress_best(raw: bytes, compressor: str) -> tuple[str, bytes, dict[str, int]]:
    """-> (name, compressed bytes, {name: size} of every compressor tried); "auto" tries all three and
    keeps the smallest (earliest in COMPRESSORS on ties)."""
    names = available_compressors() if compressor == "auto" else (compressor,)
    best: tuple[str, bytes] | None = None
    sizes: dict[str, int] = {}
    for name in names:
        blob = compress(raw, name)
        sizes[name] = len(blob)
        if best is None or len(blob) < len(best[1]):
            best = (name, blob)
    assert best is not None
    return best[0], best[1], sizes


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def _np(t: Any) -> np.ndarray:
    return t.detach().cpu().numpy() if isinstance(t, Tensor) else np.asarray(t)


def _encode_parts(name: str, entry: QTensor, layout: str) -> tuple[list[tuple[dict, bytes]], int | None, list[int]]:
    """One stored tensor -> ([(part meta without offset, raw bytes)], bits, logical shape)."""
    scheme = entry[0]
    bits = scheme_bits(scheme)
    if bits is None:
        if len(entry) != 2:
            raise ValueError(f"{name}: scheme fp16 takes one array")
        v = _np(entry[1]).astype("<f2")
        meta = {"kind": "values", "dtype": "float16", "shape": list(v.shape), "encoding": "raw", "shuffle": 2}
        return [(meta, byte_shuffle(v.tobytes(), 2).tobytes())], None, list(v.shape)
    if len(entry) != 3:
        raise ValueError(f"{name}: scheme {scheme} takes (Q, scales)")
    q = _np(entry[1])
    s = _np(entry[2]).astype("<f2")
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
        index.append({"name": name, "role": role, "shape": shape, "scheme": entry[0], "bits": bits,
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
    """Write the artifact atomically (temp file + rename); returns the number of bytes written."""
    data = encode_artifact(model_cfg_dict, tensors, compressor, roles=roles, quant_cfg_dict=quant_cfg_dict,
                           layout=layout, extra=extra)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
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
    out: list[Any] = [t["scheme"]]
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
        out.append(torch.from_numpy(np.ascontiguousarray(arr)))
    if t["bits"] is not None:
        qmax = qmax_for(t["bits"])
        Q = out[1]
        if Q.numel() and int(Q.abs().max()) > qmax:
            raise ValueError(f"{t['name']}: Q outside [-{qmax}, {qmax}]")
        if not bool(torch.isfinite(out[2]).all()):
            raise ValueError(f"{t['name']}: non-finite scale")
    return tuple(out)


def read_artifact(path: str | os.PathLike) -> tuple[dict, dict[str, QTensor]]:
    """-> (manifest, {name: QTensor}) with torch tensors; ArtifactError on anything untrustworthy."""
    path = Path(path)
    try:
        fh = open(path, "rb")
    except OSError as e:
        raise _fail(path, f"cannot open ({e.strerror})") from None
    with fh:
        size = os.fstat(fh.fileno()).st_size
        head = fh.read(HEADER_BYTES)
        if len(head) < HEADER_BYTES:
            raise _fail(path, f"truncated: {len(head)} bytes, the header alone needs {HEADER_BYTES}")
        magic, version, mlen, plen = _FIXED.unpack_from(head)
        digest = head[_FIXED.size:]
        if magic != MAGIC:
            raise _fail(path, "not a pgolf artifact (bad magic)")
        if version != ARTIFACT_FORMAT_VERSION:
            raise _fail(path, f"format version {version}, this pgolf reads version {ARTIFACT_FORMAT_VERSION}")
        if mlen > MAX_MANIFEST_BYTES:
            raise _fail(path, f"manifest length {mlen} exceeds the {MAX_MANIFEST_BYTES}-byte limit")
        if HEADER_BYTES + mlen + plen != size:
            what = "truncated" if HEADER_BYTES + mlen + plen > size else "trailing bytes"
            raise _fail(path, f"{what}: header declares {HEADER_BYTES + mlen + plen} bytes, file has {size}")
        body = fh.read(mlen + plen)
    if len(body) != mlen + plen:
        raise _fail(path, "truncated while reading (file changed?)")
    if hashlib.sha256(head[:_FIXED.size] + body).digest() != digest:
        raise _fail(path, "checksum mismatch: the file is corrupted")
    try:
        manifest = json.loads(body[:mlen].decode("utf-8"))
        _validate_manifest(manifest)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise _fail(path, f"invalid manifest: {e}") from None
    try:
        raw = decompress(body[mlen:], manifest["compressor"], manifest["raw_bytes"])
    except (ValueError, lzma.LZMAError, MemoryError, *_codec_errors()) as e:
        raise _fail(path, f"payload does not decompress: {e}") from None
    try:
        tensors = {t["name"]: _decode(t, raw) for t in manifest["tensors"]}
    except ValueError as e:
        raise _fail(path, f"invalid tensor data: {e}") from None
    return manifest, tensors


def artifact_bytes(path: str | os.PathLike) -> int:
    """Counted model bytes of an artifact: its whole file size (header + manifest + payload)."""
    return os.path.getsize(path)


# --------------------------------------------------------------------------------------------------
# Model <-> tensors
# --------------------------------------------------------------------------------------------------


def quantize_model(model: nn.Module, quant_cfg, hessians: Mapping[str, Tensor] | None = None) -> dict[str, QTensor]:
    """{param name: QTensor}, the scheme chosen by the parameter's ROLE (STACK.md 5.1):

    - matrix: GPTQ at matrix_bits with that matrix's Hessian; RTN (same grid and clip rule) when
      method = "rtn" or no Hessian is given for it;
    - embed / head: one clip per row at embed_bits, percentile 0.9999984 or SDClip (embed_sdclip_k);
      the output head's table instead gets GPTQ at embed_bits when method = "gptq", quant.head_gptq and
      a Hessian is given for it (damping head_damp, per-row clip choice by output error);
    - proj / scalar / gate: fp16 passthrough. method = "none" stores every tensor as fp16.
    """
    q = quant_cfg
    out: dict[str, QTensor] = {}
    for name, p in model.named_parameters():
        role = role_of(p)
        W = p.detach()
        if q.method == "none" or role in (Role.PROJ, Role.SCALAR, Role.GATE):
            out[name] = ("fp16", W.to(torch.float16).cpu())
        elif role is Role.MATRIX:
            H = None if (q.method == "rtn" or hessians is None) else hessians.get(name)
            if H is None:
                Q, s = rtn_quantize(W, bits=q.matrix_bits, clip=q.clip, sdclip_k=q.matrix_sdclip_k,
                                    scale_floor=q.scale_floor, select=q.clip_select)
                out[name] = (f"rtn_int{q.matrix_bits}", Q.cpu(), s.cpu())
            else:
                Q, s = gptq_quantize(W, H.to(W.device), bits=q.matrix_bits, block_size=q.block_size,
                                     damp=q.damp, act_order=q.act_order, clip=q.clip,
                                     sdclip_k=q.matrix_sdclip_k, scale_floor=q.scale_floor,
                                     select=q.clip_select)
                out[name] = (f"gptq_int{q.matrix_bits}", Q.cpu(), s.cpu())
        elif role in (Role.EMBED, Role.HEAD):
            H = hessians.get(name) if (q.method == "gptq" and q.head_gptq and hessians is not None) else None
            if H is not None:  # the output head's table (quant.head_gptq)
                Q, s = gptq_quantize(W, H.to(W.device), bits=q.embed_bits, block_size=q.block_size,
                                     damp=q.head_damp, act_order=q.act_order, clip=q.clip,
                                     sdclip_k=q.embed_sdclip_k, scale_floor=q.scale_floor, select="row")
                out[name] = (f"gptq_int{q.embed_bits}", Q.cpu(), s.cpu())
                continue
            Q, s = row_clip_quantize(W, bits=q.embed_bits, clip=q.clip, sdclip_k=q.embed_sdclip_k,
                                     scale_floor=q.scale_floor)
            method = "pctl" if q.clip == "percentile" else "sdclip"
            out[name] = (f"{method}_int{q.embed_bits}", Q.cpu(), s.cpu())
        else:
            raise AssertionError(f"no quantization scheme for role {role}")
    return out


def dequantize_entry(entry: QTensor) -> Tensor:
    """QTensor -> fp32 tensor (q * s per row, or the fp16 values widened)."""
    if scheme_bits(entry[0]) is None:
        return entry[1].float()
    return dequantize(entry[1], entry[2])


@torch.no_grad()
def apply_quantized_(model: nn.Module, tensors: Mapping[str, QTensor]) -> nn.Module:
    """Overwrite every parameter with its dequantized value (cast to the parameter's dtype). The names
    and shapes must match the model exactly (ValueError otherwise)."""
    params = dict(model.named_parameters())
    if set(params) != set(tensors):
        extra, missing = sorted(set(tensors) - set(params)), sorted(set(params) - set(tensors))
        raise ValueError(f"tensor names do not match the model: extra {extra[:3]}, missing {missing[:3]}")
    for name, p in params.items():
        v = dequantize_entry(tensors[name])
        if tuple(v.shape) != tuple(p.shape):
            raise ValueError(f"{name}: stored shape {tuple(v.shape)}, model has {tuple(p.shape)}")
        p.copy_(v.to(device=p.device, dtype=p.dtype))
    return model


def dequantized_copy(model: nn.Module, tensors: Mapping[str, QTensor]) -> nn.Module:
    """A deep copy of `model` carrying the dequantized weights (the in-memory twin of load_artifact)."""
    m = copy.deepcopy(model)
    return apply_quantized_(m, tensors)


def model_config_from_dict(d: Mapping[str, Any]):
    """ModelConfig(**d) with JSON lists turned back into tuples (ve_layers)."""
    from pgolf.config import ModelConfig

    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown model config keys {unknown}")
    return ModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def load_artifact(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Rebuild the GPT from the artifact alone (config from the manifest, dequantized weights), eval mode."""
    from pgolf.config import ConfigError
    from pgolf.model.gpt import GPT

    manifest, tensors = read_artifact(path)
    try:
        cfg = model_config_from_dict(manifest["model"])
    except (ValueError, TypeError, ConfigError) as e:
        raise _fail(path, f"invalid model config: {e}") from None
    # Shapes first, on the meta device (no memory): a config that disagrees with the stored tensors, or
    # that would describe a huge model, is refused before any real allocation.
    with torch.device("meta"):
        shapes = {n: tuple(p.shape) for n, p in GPT(cfg).named_parameters()}
    stored = {t["name"]: tuple(t["shape"]) for t in manifest["tensors"]}
    if shapes != stored:
        bad = sorted(set(shapes.items()) ^ set(stored.items()))[:3]
        raise _fail(path, f"model config does not match the stored tensors (e.g. {bad})")
    with torch.random.fork_rng(devices=[]):  # GPT() initializes from the global RNG; leave the caller's alone
        model = GPT(cfg)
    try:
        apply_quantized_(model, tensors)
    except ValueError as e:
        raise _fail(path, str(e)) from None
    return model.to(device).eval()


def save_model_artifact(path: str | os.PathLike, model: nn.Module, tensors: Mapping[str, QTensor], quant_cfg,
                        *, layout: str = "int8", compressor: str | None = None,
                        extra: Mapping[str, Any] | None = None) -> int:
    """write_artifact with the model's config, roles and the quant config filled in; returns bytes written.
    compressor: overrides quant_cfg.compressor (e.g. the one "auto" already chose)."""
    from pgolf.config import to_dict

    return write_artifact(path, to_dict(model.cfg), tensors, compressor or quant_cfg.compressor,
                          roles=roles_by_name(model), quant_cfg_dict=to_dict(quant_cfg), layout=layout, extra=extra)


def entropy_bytes(tensors: Mapping[str, QTensor]) -> dict[str, float]:
    """The ideal coded size of the stored symbols: per-tensor order-0 empirical entropy of Q (bits -> bytes),
    plus 2 bytes per fp16 scale and per fp16 passthrough value (taken as incompressible)."""
    sym = scales = passthrough = 0.0
    for entry in tensors.values():
        if scheme_bits(entry[0]) is None:
            passthrough += 2.0 * entry[1].numel()
            continue
        Q = entry[1].reshape(-1).to(torch.int64)
        if Q.numel():
            counts = torch.bincount(Q + 128, minlength=256).double()
            p = counts[counts > 0] / Q.numel()
            sym += float(-(p * p.log2()).sum()) * Q.numel() / 8.0
        scales += 2.0 * entry[2].numel()
    return {"symbols": sym, "scales": scales, "passthrough": passthrough, "total": sym + scales + passthrough}
