"""Byte layouts for quantized tensors: int8 planes, int6 bit-packing, byte shuffles. All exact round trips.

- int8 plane: the grid integers as one signed byte each (two's complement), row-major. Unused high bits
  are left to the entropy coder (docs/DESIGN.md#quant-schemes: "compression exploits the unused high bits").
- int6 packing: 4 values in 3 bytes. Each value is taken as its 6-bit two's complement v & 0x3F and
  the group a, b, c, d becomes the 24-bit word a | b << 6 | c << 12 | d << 18, stored little-endian.
  The tail is zero-padded to a group of 4; `unpack_int6` needs the value count.
- byte shuffle with stride k: for an array of k-byte elements, all first bytes, then all second bytes, ...
  (the transposition the SP8192 records apply before Brotli, docs/DESIGN.md#quant-serialization). Trailing bytes that do not
  fill a whole element stay at the end unchanged.

Functions take and return numpy uint8 / int8 arrays (bytes-like inputs are accepted).
"""

from __future__ import annotations

import numpy as np


def _as_u8(buf) -> np.ndarray:
    return np.frombuffer(buf, dtype=np.uint8) if isinstance(buf, bytes | bytearray | memoryview) else \
        np.ascontiguousarray(buf).reshape(-1).view(np.uint8)


def int8_plane(q: np.ndarray) -> np.ndarray:
    """Grid integers (any int dtype, values in [-128, 127]) -> uint8 bytes, one per value, row-major."""
    q = np.asarray(q)
    if q.size and (q.min() < -128 or q.max() > 127):
        raise ValueError("int8 plane: values outside [-128, 127]")
    return np.ascontiguousarray(q, dtype=np.int8).reshape(-1).view(np.uint8)


def from_int8_plane(buf, shape: tuple[int, ...]) -> np.ndarray:
    """uint8 bytes -> int8 array of `shape` (a copy)."""
    b = _as_u8(buf)
    n = int(np.prod(shape, dtype=np.int64))
    if b.size != n:
        raise ValueError(f"int8 plane: {b.size} bytes for shape {tuple(shape)}")
    return b.view(np.int8).reshape(shape).copy()


def packed_int6_nbytes(n: int) -> int:
    """Bytes used by `pack_int6` for n values: 3 per group of 4, last group zero-padded."""
    return 3 * ((n + 3) // 4)


def pack_int6(q: np.ndarray) -> np.ndarray:
    """Values in [-32, 31] (any shape) -> uint8 array of packed_int6_nbytes(q.size) bytes."""
    q = np.asarray(q).reshape(-1)
    if q.size and (q.min() < -32 or q.max() > 31):
        raise ValueError("pack_int6: values outside [-32, 31]")
    n = q.size
    u = np.zeros(4 * ((n + 3) // 4), dtype=np.uint32)
    u[:n] = q.astype(np.int32) & 0x3F
    g = u.reshape(-1, 4)
    word = g[:, 0] | (g[:, 1] << 6) | (g[:, 2] << 12) | (g[:, 3] << 18)  # 24-bit words
    out = np.empty((g.shape[0], 3), dtype=np.uint8)
    out[:, 0] = word & 0xFF
    out[:, 1] = (word >> 8) & 0xFF
    out[:, 2] = (word >> 16) & 0xFF
    return out.reshape(-1)


def unpack_int6(buf, n: int) -> np.ndarray:
    """Inverse of `pack_int6`: the first n values as int8 (flat)."""
    b = _as_u8(buf)
    if b.size != packed_int6_nbytes(n):
        raise ValueError(f"unpack_int6: {b.size} bytes cannot hold exactly {n} values")
    g = b.reshape(-1, 3).astype(np.uint32)
    word = g[:, 0] | (g[:, 1] << 8) | (g[:, 2] << 16)
    u = np.stack([(word >> sh) & 0x3F for sh in (0, 6, 12, 18)], axis=1).reshape(-1)[:n]
    v = u.astype(np.int16)
    v[v >= 32] -= 64  # sign-extend the 6-bit two's complement
    return v.astype(np.int8)


def byte_shuffle(buf, stride: int) -> np.ndarray:
    """Group byte i of every `stride`-byte element together: (n, stride) -> transpose -> flat."""
    b = _as_u8(buf)
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    whole = b.size - b.size % stride
    head = b[:whole].reshape(-1, stride).T.reshape(-1)
    return np.concatenate([head, b[whole:]])


def byte_unshuffle(buf, stride: int) -> np.ndarray:
    """Inverse of `byte_shuffle`."""
    b = _as_u8(buf)
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    whole = b.size - b.size % stride
    head = b[:whole].reshape(stride, -1).T.reshape(-1)
    return np.concatenate([head, b[whole:]])
