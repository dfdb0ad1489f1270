"""Exact BPB byte accounting: the LUT rule against the decoded, normalized text."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgolf.data.tokenizer import (
    build_byte_luts,
    load_tokenizer,
    luts_to_torch,
    stream_target_bytes,
    target_bytes,
    target_bytes_torch,
)
from pgolf.tools.data.spm import normalized_text
from tests.helpers.paths import shared_dir

REF_TOKENIZER = shared_dir() / "reference" / "tokenizers" / "fineweb_1024_bpe.model"


@pytest.fixture(scope="module", params=["reference", "tiny"])
def sp(request, tiny_data):
    if request.param == "reference":
        return load_tokenizer(REF_TOKENIZER)
    return load_tokenizer(tiny_data["tokenizer"])


def lut_bytes_of(sp, luts, text: str) -> int:
    ids = [sp.bos_id()] + sp.encode(text)
    s = np.asarray(ids, dtype=np.int64)
    return int(target_bytes(luts, s[:-1], s[1:]).sum())


CASES = [
    ("plain", "hello world"),
    ("leading space", " hello world"),
    ("leading spaces and tabs", " \t  indented text"),
    ("trailing space", "end with space "),
    ("collapsed whitespace", "a    b\n\n\nc"),
    ("digits", "in 1999 there were 12345 items, 3.14159"),
    ("byte fallback emoji", "smile 😀 and ☃ snow"),
    ("byte fallback CJK", "漢字かなカナ 한국어"),
    ("nfkc ligature", "ﬁne ﬂow"),
    ("nfkc fullwidth", "ＡＢＣ１２３"),
    ("nfkc compatibility", "x² ½ ™ Ⅻ"),
    ("combining accents", "cafe\u0301 vs café"),
    ("ideographic space", "a\u3000b"),
    ("literal U+2581", "\u2581x y\u2581z"),
    ("NUL", "a\x00b"),
    ("empty", ""),
    ("only spaces", "    "),
    ("newlines only", "\n\n"),
]


@pytest.mark.parametrize("label,text", CASES, ids=[c[0] for c in CASES])
def test_lut_equals_normalized_and_decoded_bytes(sp, label, text):
    luts = build_byte_luts(sp, 1024)
    lut = lut_bytes_of(sp, luts, text)
    decoded = sp.decode(sp.encode(text))
    assert lut == len(decoded.encode("utf-8")), (label, decoded)
    assert lut == len(normalized_text(sp, text).encode("utf-8")), label


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60))
def test_lut_equals_decoded_bytes_on_random_unicode(text):
    sp = load_tokenizer(REF_TOKENIZER)
    luts = build_byte_luts(sp, 1024)
    assert lut_bytes_of(sp, luts, text) == len(sp.decode(sp.encode(text)).encode("utf-8"))


def test_lut_tables_follow_the_rule():
    sp = load_tokenizer(REF_TOKENIZER)
    luts = build_byte_luts(sp, 1100)
    assert luts.size == 1100
    assert luts.is_boundary[[0, 1, 2, 3]].all() and luts.is_boundary[1024:].all()
    assert (luts.base_bytes[[0, 1, 2, 3]] == 0).all() and (luts.base_bytes[1024:] == 0).all()
    byte_ids = [i for i in range(1024) if sp.is_byte(i)]
    assert len(byte_ids) == 256 and (luts.base_bytes[byte_ids] == 1).all()
    for i in range(1024):
        piece = sp.id_to_piece(i)
        if not luts.is_boundary[i] and not sp.is_byte(i):
            assert luts.has_leading_space[i] == piece.startswith("\u2581")
            assert luts.base_bytes[i] == len(piece.removeprefix("\u2581").encode())


def test_space_after_bos_is_not_charged():
    sp = load_tokenizer(REF_TOKENIZER)
    luts = build_byte_luts(sp)
    word = sp.piece_to_id("\u2581the")
    assert luts.has_leading_space[word]
    prev = np.array([sp.bos_id(), sp.piece_to_id("a")])
    tgt = np.array([word, word])
    assert target_bytes(luts, prev, tgt).tolist() == [3, 4]


def test_torch_twin_and_stream_total_match_numpy():
    import torch

    sp = load_tokenizer(REF_TOKENIZER)
    luts = build_byte_luts(sp)
    rng = np.random.default_rng(0)
    stream = rng.integers(0, 1024, size=5000)
    want = target_bytes(luts, stream[:-1], stream[1:])
    got = target_bytes_torch(luts_to_torch(luts), torch.as_tensor(stream[:-1]), torch.as_tensor(stream[1:]))
    assert got.tolist() == want.tolist()
    assert stream_target_bytes(luts, stream, chunk=777) == int(want.sum())
