"""Regression (issue 13, item 10): bad JSONL given to `pgolf data prepare` is reported as ONE line naming the
file, the line and the problem, before a tokenizer is trained or anything is written under --out.

On the landed tree (3a30210) an invalid line, a line without "text" (and every other bad line) surfaced as a
3-line "tokenizer training failed ... At: ..." message, a lone surrogate as a pybind11 cast error naming no
file, and the tokenizers/ folder was already created. Every case here runs in one child (`run_all`; with
HARDENING_CHILD_SRC, one child each against that tree)."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma

import pytest

from tests.helpers.cli_fuzz import assert_one_error, run_all

GOOD = b'{"text": "a perfectly fine document"}\n'
BODY = b"".join(json.dumps({"text": f"document number {i} " * 8}).encode() + b"\n" for i in range(3000))


def _damaged(data: bytes, how: str) -> bytes:
    if how == "truncate":
        return data[: len(data) // 2]
    mid = len(data) // 2  # a byte flip inside the compressed payload (never in a header field nobody checks)
    return data[:mid] + bytes([data[mid] ^ 0x55]) + data[mid + 1:]


# id -> (file name, content, what the error line must say besides the path; "{p}" = the path)
CASES: dict[str, tuple[str, bytes, tuple[str, ...]]] = {
    "invalid_json": ("a.jsonl", GOOD + b"not json\n", ("{p}:2:", "not valid JSON")),
    "no_text_field": ("a.jsonl", GOOD + b'{"txt": "no"}\n', ("{p}:2:", "without 'text'")),
    "not_an_object": ("a.jsonl", GOOD + b'["text", "x"]\n', ("{p}:2:", "got an array")),
    "text_not_a_string": ("a.jsonl", GOOD + b'{"text": 5}\n', ("{p}:2:", "'text' is a number")),
    "text_null": ("a.jsonl", GOOD + GOOD + b'{"text": null}\n', ("{p}:3:", "'text' is null")),
    "lone_high_surrogate": ("a.jsonl", GOOD + b'{"text": "a\\ud800b"}\n', ("{p}:2:", "lone surrogate U+D800")),
    "lone_low_surrogate": ("a.jsonl", GOOD + b'{"text": "\\udfff"}\n', ("{p}:2:", "lone surrogate U+DFFF")),
    "not_utf8": ("a.jsonl", GOOD + b'{"text": "caf\xe9"}\n', ("{p}:2:", "not UTF-8", "0xe9")),
    "utf8_encoded_surrogate": ("a.jsonl", GOOD + b'{"text": "\xed\xa0\x80"}\n', ("{p}:2:", "not UTF-8")),
    "utf16_file": ("a.jsonl", '{"text": "hi"}\n'.encode("utf-16"), ("{p}:1:", "NUL byte")),
    "nul_only": ("a.jsonl", b"\x00" * 65536, ("{p}:1:", "NUL byte")),
    "empty_file": ("a.jsonl", b"", ("{p}:", "no documents")),
    "blank_lines_only": ("a.jsonl", b"\n \n\t\n", ("{p}:", "no documents")),
    "deeply_nested": ("a.jsonl", GOOD + b"[" * 200_000 + b"\n", ("{p}:2:", "nested too deeply")),
    "huge_integer": ("a.jsonl", GOOD + b'{"text": "x", "n": ' + b"9" * 5000 + b"}\n", ("{p}:2:", "digits")),
    "truncated_xz": ("a.jsonl.xz", _damaged(lzma.compress(BODY), "truncate"), ("{p}:", "ends early")),
    "truncated_gz": ("a.jsonl.gz", _damaged(gzip.compress(BODY), "truncate"), ("{p}:", "ends early")),
    "truncated_bz2": ("a.jsonl.bz2", _damaged(bz2.compress(BODY), "truncate"), ("{p}:", "ends early")),
    "corrupt_xz": ("a.jsonl.xz", _damaged(lzma.compress(BODY), "flip"), ("{p}:", "damaged")),
    "corrupt_gz": ("a.jsonl.gz", _damaged(gzip.compress(BODY), "flip"), ("{p}:", "damaged")),
    "corrupt_bz2": ("a.jsonl.bz2", _damaged(bz2.compress(BODY), "flip"), ("{p}:", "damaged")),
    "plain_named_gz": ("a.jsonl.gz", BODY, ("{p}: not gzip data",)),
    "zstd_data": ("a.jsonl", b"\x28\xb5\x2f\xfd" + b"\x00" * 32, ("{p}: zstd-compressed",)),
}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    d = tmp_path_factory.mktemp("docs_errors")
    cases, argvs = {}, []
    for i, (cid, (fname, data, mentions)) in enumerate(CASES.items()):
        p = d / f"{i:02d}_{fname}"
        p.write_bytes(data)
        out = d / f"out_{i:02d}"
        cases[cid] = (p, out, tuple(m.replace("{p}", str(p)) for m in mentions))
        argvs.append(["data", "prepare", "--docs", str(p), "--val-docs", "1", "--vocab-size", "300",
                      "--out", str(out)])
    runs = run_all(argvs, seconds_each=30)
    return {cid: (run, *cases[cid]) for cid, run in zip(CASES, runs, strict=True)}


@pytest.mark.parametrize("cid", list(CASES))
def test_bad_documents_one_line_naming_file_and_line(results, cid):
    r, path, out, mentions = results[cid]
    assert_one_error(r, *mentions)
    assert not out.exists(), f"{cid}: a refused run wrote {sorted(out.rglob('*'))}"
    assert r.seconds < 10, f"{cid}: {r.seconds:.1f}s"
    assert r.max_rss_mib < 1500, f"{cid}: {r.max_rss_mib:.0f} MiB"
