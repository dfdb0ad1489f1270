"""The compressors an artifact payload may use: lzma (stdlib), brotli and zstd (optional packages).

brotli and zstandard are imported lazily: the bundled train_gpt.py needs only torch, numpy,
sentencepiece and brotli, and a machine without one of them still runs ("auto" skips it; a file
compressed with it fails with a clear message naming the package). Decompression is bounded: it
never produces more than the declared size + 1 bytes.
"""

from __future__ import annotations

import io
import lzma

COMPRESSORS = ("lzma", "brotli", "zstd")
_MODULE = {"brotli": "brotli", "zstd": "zstandard"}


def _optional(module: str):
    """The optional codec module, or None when it is not installed."""
    try:  # explicit imports (not importlib) so the bundle's import scan records them as optional
        if module == "brotli":
            import brotli as mod
        else:
            import zstandard as mod
    except ImportError:
        return None
    return mod


def _codec(name: str, reading: bool):
    mod = _optional(_MODULE[name])
    if mod is None:
        if reading:
            raise ValueError(f"this artifact is {name}-compressed; install the '{_MODULE[name]}' package to read it")
        raise ValueError(f"compressor {name} needs the '{_MODULE[name]}' package (pip install {_MODULE[name]})")
    return mod


def codec_errors() -> tuple[type[BaseException], ...]:
    """The decoding exceptions of the optional codecs that are installed."""
    errs: list[type[BaseException]] = []
    if (b := _optional("brotli")) is not None:
        errs.append(b.error)
    if (z := _optional("zstandard")) is not None:
        errs.append(z.ZstdError)
    return tuple(errs)


def available_compressors() -> tuple[str, ...]:
    return tuple(c for c in COMPRESSORS if c not in _MODULE or _optional(_MODULE[c]) is not None)


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
