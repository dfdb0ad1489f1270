import subprocess
import sys

import numpy as np
import pytest

from pgolf.data.shards import (
    HEADER_BYTES,
    MAGIC,
    ShardError,
    list_shards,
    load_val_tokens,
    open_shard,
    read_header,
    sha256_file,
    write_shard,
)


def _write(path, toks):
    return write_shard(path, np.asarray(toks, dtype=np.uint16))


def test_roundtrip_and_exact_bytes(tmp_path):
    toks = np.arange(1000, dtype=np.uint16) % 700
    sha = _write(tmp_path / "fineweb_val_000000.bin", toks)
    raw = (tmp_path / "fineweb_val_000000.bin").read_bytes()
    assert len(raw) == HEADER_BYTES + 2 * 1000
    header = np.frombuffer(raw[:HEADER_BYTES], dtype="<i4")
    assert list(header[:3]) == [MAGIC, 1, 1000] and not header[3:].any()
    assert sha == sha256_file(tmp_path / "fineweb_val_000000.bin")
    assert read_header(tmp_path / "fineweb_val_000000.bin") == 1000
    np.testing.assert_array_equal(open_shard(tmp_path / "fineweb_val_000000.bin", 700), toks)


def test_val_stream_concatenates_in_sorted_order(tmp_path):
    _write(tmp_path / "fineweb_val_000001.bin", [5, 6])
    _write(tmp_path / "fineweb_val_000000.bin", [1, 2, 3])
    _write(tmp_path / "fineweb_train_000000.bin", [9, 9])
    np.testing.assert_array_equal(load_val_tokens(tmp_path), [1, 2, 3, 5, 6])
    assert [p.name for p in list_shards(tmp_path, "train")] == ["fineweb_train_000000.bin"]


def _corrupt(tmp_path, kind):
    p = tmp_path / "fineweb_val_000000.bin"
    _write(p, np.arange(100) % 50)
    raw = bytearray(p.read_bytes())
    if kind == "magic":
        raw[0:4] = (123).to_bytes(4, "little")
    elif kind == "version":
        raw[4:8] = (2).to_bytes(4, "little")
    elif kind == "truncated":
        raw = raw[:-7]
    elif kind == "trailing":
        raw += b"\0\0"
    elif kind == "short_header":
        raw = raw[:100]
    elif kind == "range":
        raw[HEADER_BYTES + 2 * 42:HEADER_BYTES + 2 * 43] = (999).to_bytes(2, "little")
    p.write_bytes(bytes(raw))
    return p


@pytest.mark.parametrize("kind,needle,offset", [
    ("magic", "bad magic 123", 0),
    ("version", "unsupported version 2", 4),
    ("truncated", "truncated: header says 100 tokens (1224 bytes), file has 1217 bytes", 1217),
    ("trailing", "trailing bytes", 1224),
    ("short_header", "truncated header", 0),
    ("range", "token id 999 at token index 42 is out of range for vocab size 512", HEADER_BYTES + 84),
])
def test_corrupt_shards_name_file_offset_problem(tmp_path, kind, needle, offset):
    p = _corrupt(tmp_path, kind)
    with pytest.raises(ShardError) as ei:
        open_shard(p, vocab_size=512)
    msg = str(ei.value)
    assert str(p) in msg and needle in msg and f"(byte offset {offset})" in msg
    assert "\n" not in msg
    assert ei.value.offset == offset


def test_missing_things(tmp_path):
    with pytest.raises(ShardError, match="file not found"):
        read_header(tmp_path / "nope.bin")
    with pytest.raises(ShardError, match="data directory not found"):
        list_shards(tmp_path / "nodir", "val")
    with pytest.raises(ShardError, match="no fineweb_val_"):
        list_shards(tmp_path, "val")


@pytest.mark.parametrize("kind", ["magic", "truncated", "range"])
def test_cli_verify_corrupt_shard_one_line(tmp_path, tiny_data, kind):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(tiny_data["root"], root)
    ds = root / tiny_data["dataset_path"]
    p = ds / "fineweb_val_000000.bin"
    raw = bytearray(p.read_bytes())
    if kind == "magic":
        raw[0:4] = b"\0\0\0\0"
    elif kind == "truncated":
        raw = raw[:-3]
    else:
        raw[HEADER_BYTES + 10:HEADER_BYTES + 12] = (60000).to_bytes(2, "little")
    p.write_bytes(bytes(raw))
    r = subprocess.run([sys.executable, "-m", "pgolf", "data", "verify", "--data", str(root)],
                       capture_output=True, text=True)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr + r.stdout
    assert "verify: FAIL" in r.stdout and str(p) in r.stdout
    # the bad shard is named on one problem line
    assert any(str(p) in line and ("magic" in line or "truncated" in line or "60000" in line)
               for line in r.stdout.splitlines())


def test_cli_prepare_missing_docs_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pgolf", "data", "prepare", "--docs", str(tmp_path / "x.jsonl"),
                        "--val-docs", "1", "--vocab-size", "300", "--out", str(tmp_path / "o")],
                       capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0
    assert "x.jsonl: documents file not found" in r.stderr and "Traceback" not in r.stderr
