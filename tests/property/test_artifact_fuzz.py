"""Fuzzing the artifact reader (hypothesis): truncations, bit flips anywhere, oversized or inconsistent
length fields -- always an ArtifactError, never another exception, never a hang (per-example deadline),
never an allocation far beyond the file size (tracemalloc peak < 4 x file + 1 MiB)."""

from __future__ import annotations

import hashlib
import json
import struct
import tracemalloc

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgolf.config import to_dict
from pgolf.presets import tiny
from pgolf.quant import artifact, codecs, container
from pgolf.quant.grid import row_clip_quantize, rtn_quantize

FUZZ = settings(max_examples=200, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _tensors() -> dict:
    g = torch.Generator().manual_seed(0)
    W = torch.randn(8, 12, generator=g) * 0.05
    T = torch.randn(6, 10, generator=g)
    return {"m": ("rtn_int6", *rtn_quantize(W, bits=6)), "t": ("pctl_int8", *row_clip_quantize(T, bits=8)),
            "v": ("fp16", torch.randn(5, generator=g).half())}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("fuzz")
    out = {}
    for c in codecs.COMPRESSORS:
        p = d / f"{c}.pgart"
        container.write_artifact(p, to_dict(tiny().model), _tensors(), c, layout="int6p" if c == "zstd" else "int8")
        out[c] = p.read_bytes()
        container.read_artifact(p)  # the pristine file reads
    return out


def _expect_artifact_error(tmp_path, blob: bytes) -> str:
    p = tmp_path / "fuzzed.pgart"
    p.write_bytes(blob)
    tracemalloc.start()
    try:
        with pytest.raises(container.ArtifactError) as ei:
            container.read_artifact(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * len(blob) + 2**20, f"peak allocation {peak} for a {len(blob)}-byte file"
    msg = str(ei.value)
    assert "\n" not in msg and str(p) in msg
    return msg


def _resign(blob: bytes, manifest: dict | None = None, payload: bytes | None = None) -> bytes:
    """Rebuild a file with a valid digest (what a careless or malicious writer could produce)."""
    _, version, mlen, plen = struct.unpack_from("<8sHIQ", blob)
    mbytes = blob[54:54 + mlen] if manifest is None else json.dumps(manifest).encode()
    body = blob[54 + mlen:] if payload is None else payload
    fixed = struct.pack("<8sHIQ", container.MAGIC, version, len(mbytes), len(body))
    return fixed + hashlib.sha256(fixed + mbytes + body).digest() + mbytes + body


compressors = st.sampled_from(codecs.COMPRESSORS)


@FUZZ
@given(c=compressors, frac=st.floats(0.0, 1.0, exclude_max=True))
def test_truncation(tmp_path, files, c, frac):
    blob = files[c]
    _expect_artifact_error(tmp_path, blob[: int(frac * len(blob))])


@FUZZ
@given(c=compressors, data=st.data())
def test_bit_flip_anywhere(tmp_path, files, c, data):
    blob = bytearray(files[c])
    bit = data.draw(st.integers(0, 8 * len(blob) - 1))
    blob[bit // 8] ^= 1 << (bit % 8)
    _expect_artifact_error(tmp_path, bytes(blob))


@FUZZ
@given(c=compressors, field=st.sampled_from(["manifest", "payload"]), value=st.integers(0, 2**64 - 1),
       resign=st.booleans())
def test_oversized_header_lengths(tmp_path, files, c, field, value, resign):
    blob = bytearray(files[c])
    if field == "manifest":
        value %= 2**32
        if value == struct.unpack_from("<I", blob, 10)[0]:
            value += 1
        struct.pack_into("<I", blob, 10, value % 2**32)
    else:
        if value == struct.unpack_from("<Q", blob, 14)[0]:
            value = (value + 1) % 2**64
        struct.pack_into("<Q", blob, 14, value)
    if resign:
        fixed = bytes(blob[:22])
        blob[22:54] = hashlib.sha256(fixed + bytes(blob[54:])).digest()
    _expect_artifact_error(tmp_path, bytes(blob))


def _numeric_slots(m: dict) -> list[tuple]:
    """Paths to the manifest numbers the reader must bound-check (not the informational ones)."""
    slots: list[tuple] = [("raw_bytes",)]
    for i, t in enumerate(m["tensors"]):
        slots.append(("tensors", i, "bits"))
        slots += [("tensors", i, "shape", k) for k in range(len(t["shape"]))]
        for j, p in enumerate(t["parts"]):
            slots += [("tensors", i, "parts", j, key) for key in ("offset", "length", "shuffle")]
            slots += [("tensors", i, "parts", j, "shape", k) for k in range(len(p["shape"]))]
    return slots


@FUZZ
@given(c=compressors, data=st.data(),
       value=st.one_of(st.integers(-(2**70), 2**70), st.integers(0, 4096), st.sampled_from([None, "7", 1.5, []])))
def test_signed_manifest_with_bad_numbers(tmp_path, files, c, data, value):
    blob = files[c]
    mlen = struct.unpack_from("<I", blob, 10)[0]
    m = json.loads(blob[54:54 + mlen])
    path = data.draw(st.sampled_from(_numeric_slots(m)))
    node = m
    for key in path[:-1]:
        node = node[key]
    if node[path[-1]] == value and type(node[path[-1]]) is type(value):
        value = -1
    node[path[-1]] = value
    _expect_artifact_error(tmp_path, _resign(blob, manifest=m))


@settings(max_examples=30, deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(c=compressors, payload=st.binary(max_size=2000))
def test_signed_garbage_payload(tmp_path, files, c, payload):
    _expect_artifact_error(tmp_path, _resign(files[c], payload=payload))


def test_signed_decompression_bomb_is_bounded(tmp_path, files):
    """A correctly signed payload that inflates beyond raw_bytes stops at raw_bytes + 1 bytes (per compressor)."""
    blob = files["zstd"]
    mlen = struct.unpack_from("<I", blob, 10)[0]
    m = json.loads(blob[54:54 + mlen])
    for c in codecs.COMPRESSORS:
        m["compressor"] = c
        bomb = codecs.compress(b"\0" * 5_000_000, c)  # 5 MB of zeros, a few hundred bytes compressed
        _expect_artifact_error(tmp_path, _resign(blob, manifest=m, payload=bomb))


def test_load_artifact_refuses_a_config_that_disagrees(tmp_path, files):
    blob = files["lzma"]
    mlen = struct.unpack_from("<I", blob, 10)[0]
    m = json.loads(blob[54:54 + mlen])
    p = tmp_path / "x.pgart"
    p.write_bytes(blob)
    with pytest.raises(container.ArtifactError, match="does not match the stored tensors"):
        artifact.load_artifact(p)  # the synthetic tensors are not a GPT
    m["model"]["vocab_size"] = 10**9
    p.write_bytes(_resign(blob, manifest=m))
    with pytest.raises(container.ArtifactError, match="invalid model config"):
        artifact.load_artifact(p)
    m["model"] = {"no_such_key": 1}
    p.write_bytes(_resign(blob, manifest=m))
    with pytest.raises(container.ArtifactError, match="invalid model config"):
        artifact.load_artifact(p)
