"""Fuzzing the "documents" surface of `pgolf data prepare`: seeded generators of malformed JSONL lines,
wrong encodings and damaged compressed files, every one run through the CLI in ONE child (`run_many`):
non-zero exit, exactly one `pgolf: error:` line naming the file (and, for a damaged line, that line), no
traceback, nothing written under --out, bounded time and memory. In-process (hypothesis): any bytes give
documents or a DocsError, never another exception; valid documents of any text read back unchanged."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import random
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgolf.tools.data.docs import DocsError, iter_docs
from tests.helpers.cli_fuzz import assert_one_error, error_lines, run_many

SEED = 20240520
BAD_UTF8 = [b"\xff", b"\xfe", b"\xc0\xaf", b"\x80", b"\xbf", b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xf8\x88\x80\x80\x80",
            b"\xe2\x82", b"\xf4\x90\x80\x80", b"\xc2"]
NOT_STRINGS = [b"5", b"1.5", b"-0", b"true", b"false", b"null", b"[]", b"{}", b'["x"]', b'{"text": "x"}']
NOT_OBJECTS = [b'[{"text": "x"}]', b'"text"', b"42", b"null", b"true", b"[]"]
TRAILING = [b" x", b"}", b",", b" {}", b"]", b' "x"']


def _doc(rng: random.Random) -> str:
    words = ["the", "data", "caf\u00e9", "\u00fcber", "na\u00efve", "\u6587\u5b57", "\U0001f600", "x" * 40, "12345"]
    return " ".join(rng.choice(words) for _ in range(rng.randint(1, 30)))


def _line(text: str, rng: random.Random) -> bytes:
    return json.dumps({"id": rng.randint(0, 9), "text": text}, ensure_ascii=rng.random() < 0.5).encode()


def _inside_text(line: bytes, rng: random.Random) -> int:
    """A byte offset inside the "text" string value of `line` at a character boundary outside any escape:
    right after the opening quote or before one of its (ASCII) spaces."""
    start = line.index(b'"text": "') + len(b'"text": "')
    end = line.rindex(b'"')
    return rng.choice([start, *(i for i in range(start, end) if line[i:i + 1] == b" ")])


def _mutate(line: bytes, kind: str, rng: random.Random) -> bytes:
    if kind == "garbage":
        return b"x" + bytes(rng.choice(b"abc{}[]:,\"' 019") for _ in range(rng.randint(0, 30)))
    if kind == "truncate":
        return line[: rng.randint(1, len(line) - 1)]
    if kind == "nul":
        pos = rng.randint(0, len(line))
        return line[:pos] + b"\x00" + line[pos:]
    if kind == "bad_utf8":
        pos = _inside_text(line, rng)
        return line[:pos] + rng.choice(BAD_UTF8) + b"a" + line[pos:]
    if kind == "latin1":
        pos = _inside_text(line, rng)
        return line[:pos] + "\u00e9".encode("latin-1") + b"a" + line[pos:]
    if kind == "surrogate":
        pos = _inside_text(line, rng)
        esc = rng.choice([f"\\u{rng.randint(0xD800, 0xDBFF):04x}x", f"\\u{rng.randint(0xDC00, 0xDFFF):04X}",
                          "\\udc00\\ud800"]).encode()
        return line[:pos] + esc + line[pos:]
    if kind == "control_char":
        pos = _inside_text(line, rng)
        return line[:pos] + bytes([rng.choice([c for c in range(32) if c not in (0, 10)])]) + line[pos:]
    if kind == "no_text":
        return line.replace(b'"text":', rng.choice([b'"txt":', b'"Text":', b'"text ":', b'"":']), 1)
    if kind == "wrong_type":
        start = line.index(b'"text": ') + len(b'"text": ')
        return line[:start] + rng.choice(NOT_STRINGS) + b"}"
    if kind == "not_object":
        return rng.choice(NOT_OBJECTS)
    if kind == "trailing":
        return line + rng.choice(TRAILING)
    if kind == "deep":
        return rng.choice([b"[", b'{"a":']) * rng.randint(100_000, 300_000)
    if kind == "bigint":
        return line[:-1] + b', "n": ' + b"7" * rng.randint(4400, 20_000) + b"}"
    raise AssertionError(kind)


LINE_KINDS = ["garbage", "truncate", "nul", "bad_utf8", "latin1", "surrogate", "control_char", "no_text",
              "wrong_type", "not_object", "trailing", "deep", "bigint"]
LINE_EXPECT = {"garbage": "not valid JSON", "truncate": "not valid JSON", "nul": "NUL byte", "bad_utf8": "not UTF-8",
               "latin1": "not UTF-8", "surrogate": "lone surrogate", "control_char": "not valid JSON",
               "no_text": "without 'text'", "wrong_type": "'text' is", "not_object": "expected a JSON object",
               "trailing": "not valid JSON", "deep": "nested too deeply", "bigint": "digits"}


def _good_body(rng: random.Random, n: int) -> bytes:
    return b"".join(_line(_doc(rng), rng) + rng.choice([b"\n", b"\r\n"]) for _ in range(n))


def _compress(kind: str, data: bytes) -> bytes:
    return {"xz": lzma.compress, "gz": gzip.compress, "bz2": bz2.compress}[kind](data)


def build_cases(d: Path, rng: random.Random) -> list[dict]:
    """Each case: files to write, the --docs given, and what its one error line must contain."""
    cases = []

    def add(kind: str, files: dict[str, bytes], mentions: list[str], pattern: str | None = None):
        paths = []
        for name, data in files.items():
            p = d / f"{len(cases):03d}_{name}"
            p.write_bytes(data)
            paths.append(p)
        bad = str(paths[-1])
        cases.append({"kind": kind, "docs": paths, "out": d / f"out_{len(cases):03d}",
                      "mentions": [m.replace("{p}", bad) for m in mentions],
                      "pattern": pattern.replace("{p}", re.escape(bad)) if pattern else None})

    # 1. one damaged line among good ones; the error names exactly that line
    for kind in LINE_KINDS:
        for _ in range(16 if kind not in ("deep", "bigint") else 3):
            lines = [_line(_doc(rng), rng) for _ in range(rng.randint(1, 6))]
            j = rng.randrange(len(lines))
            lines[j] = _mutate(lines[j], kind, rng)
            eol = rng.choice([b"\n", b"\r\n"])
            blank = rng.random() < 0.3  # blank lines before the bad one still count as lines
            body = (b"\n" if blank else b"") + eol.join(lines) + eol
            add(kind, {"a.jsonl": body}, [f"{{p}}:{j + 1 + blank}:", LINE_EXPECT[kind]])
    # 2. a good first file, the damage in the second: the second is named
    for kind in ("truncate", "surrogate", "bad_utf8", "no_text"):
        for _ in range(3):
            good, bad = _good_body(rng, 3), _mutate(_line(_doc(rng), rng), kind, rng)
            add(f"second_file_{kind}", {"good.jsonl": good, "bad.jsonl": _good_body(rng, 2) + bad + b"\n"},
                ["{p}:3:", LINE_EXPECT[kind]])
    # 3. whole files in another encoding, NUL-only, empty, blank
    text_file = b"".join(_line(_doc(rng), rng) + b"\n" for _ in range(3)).decode()
    for enc in ("utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le"):
        add(f"encoding_{enc}", {"a.jsonl": text_file.encode(enc)}, ["{p}:1:", "NUL byte"])
    for enc in ("latin-1", "cp1252"):
        add(f"encoding_{enc}", {"a.jsonl": '{"text": "caf\u00e9 au lait"}\n'.encode(enc)}, ["{p}:1:", "not UTF-8"])
    for n in (1, 4096, 100_000):
        add("nul_only", {"a.jsonl": b"\x00" * n}, ["{p}:1:", "NUL byte"])
    add("empty", {"a.jsonl": b""}, ["{p}:", "no documents"])
    add("blank_only", {"a.jsonl": b"\n\r\n \t\n"}, ["{p}:", "no documents"])
    # 4. compressed files: truncated, a flipped byte, trailing garbage (gzip), empty stream, wrong name
    for comp in ("xz", "gz", "bz2"):
        data = _compress(comp, _good_body(rng, 400))
        for _ in range(8):
            cut = rng.randint(1, len(data) - 1)
            add(f"truncated_{comp}", {f"a.jsonl.{comp}": data[:cut]}, ["{p}"], pattern=r"{p}(:\d+:| not)")
        for _ in range(8):
            pos = rng.randint(len(data) // 10 + 16, len(data) * 9 // 10)
            flipped = data[:pos] + bytes([data[pos] ^ (1 << rng.randrange(8))]) + data[pos + 1:]
            add(f"flipped_{comp}", {f"a.jsonl.{comp}": flipped}, ["{p}"], pattern=r"{p}:\d+:")
        add(f"empty_stream_{comp}", {f"a.jsonl.{comp}": _compress(comp, b"")}, ["{p}:", "no documents"])
        add(f"plain_named_{comp}", {f"a.jsonl.{comp}": _good_body(rng, 2)}, ["{p}: not "])
    add("gz_trailing_garbage", {"a.jsonl.gz": gzip.compress(_good_body(rng, 5)) + b"garbage!"}, ["{p}:", "damaged"])
    bomb = gzip.compress(b"\x00" * (64 * 2**20), compresslevel=1)
    add("gz_of_64MiB_of_NUL", {"a.jsonl.gz": bomb}, ["{p}:1:", "NUL byte"])
    return cases


@pytest.fixture(scope="module")
def fuzz_results(tmp_path_factory):
    d = tmp_path_factory.mktemp("docs_fuzz")
    cases = build_cases(d, random.Random(SEED))
    argvs = [["data", "prepare", *[a for p in c["docs"] for a in ("--docs", str(p))], "--val-docs", "1",
              "--vocab-size", "300", "--out", str(c["out"])] for c in cases]
    runs = run_many(argvs, seconds_each=30)
    return list(zip(cases, runs, strict=True))


def test_every_malformed_input_fails_with_one_line(fuzz_results):
    problems, kinds = [], {}
    for case, r in fuzz_results:
        kinds[case["kind"].split("_")[0]] = kinds.get(case["kind"].split("_")[0], 0) + 1
        try:
            line = assert_one_error(r, *case["mentions"])
            if case["pattern"]:
                assert re.search(case["pattern"], line), f"{case['pattern']!r} not in {line!r}"
            assert not case["out"].exists(), f"wrote {sorted(case['out'].rglob('*'))}"
            assert r.seconds < 10, f"{r.seconds:.1f}s"
        except AssertionError as exc:
            problems.append(f"{case['kind']} {[p.name for p in case['docs']]}: {str(exc)[:600]}")
    print(f"\n{len(fuzz_results)} malformed inputs, {len(problems)} problems; by kind: {kinds}")
    assert not problems, "\n".join(problems[:10])
    assert len(fuzz_results) >= 250
    assert max(r.max_rss_mib for _, r in fuzz_results) < 1500


def test_fuzz_errors_are_not_all_alike(fuzz_results):
    """A guard on the generator itself: the cases reach many distinct messages, not one failure mode."""
    kinds = {re.sub(r"[:/][^ ]*|\d+|0x..|U\+....", "", error_lines(r.stderr)[0])[:40] for _, r in fuzz_results}
    assert len(kinds) >= 12, kinds


FUZZ = settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(data=st.binary(max_size=400))
def test_any_bytes_give_documents_or_docs_error(tmp_path, data):
    p = tmp_path / "x.jsonl"
    p.write_bytes(data)
    try:
        texts = list(iter_docs([p]))
    except DocsError as exc:
        assert str(p) in str(exc) and "\n" not in str(exc)
        return
    assert texts and all(isinstance(t, str) for t in texts)
    for t in texts:
        t.encode("utf-8")  # every text accepted is encodable


@FUZZ
@given(texts=st.lists(st.text(st.characters(exclude_categories=("Cs",)), max_size=60), min_size=1, max_size=6),
       ascii_only=st.booleans(), crlf=st.booleans(), bom=st.booleans(), comp=st.sampled_from(["", ".gz", ".xz"]))
def test_valid_documents_read_back_unchanged(tmp_path, texts, ascii_only, crlf, bom, comp):
    eol = b"\r\n" if crlf else b"\n"
    body = (b"\xef\xbb\xbf" if bom else b"") + b"".join(
        json.dumps({"text": t}, ensure_ascii=ascii_only).encode() + eol + (eol if i % 2 else b"")
        for i, t in enumerate(texts))
    p = tmp_path / f"x.jsonl{comp}"
    p.write_bytes({"": lambda b: b, ".gz": gzip.compress, ".xz": lzma.compress}[comp](body))
    assert list(iter_docs([p])) == texts
