"""Training a SentencePiece tokenizer with the challenge's settings, its text normalization, and encoding
long documents in pieces.

Used by `pgolf data prepare` (training, encoding) and `pgolf data verify` (the normalized text whose UTF-8
bytes are the byte basis of BPB). The scorers only need the byte lookup tables (`pgolf.data.tokenizer`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import sentencepiece as spm

from pgolf.data.tokenizer import SPACE, TokenizerError

# The challenge's SentencePiece settings (data/download_hf_docs_and_tokenize.py; docs/DESIGN.md#data-tokenizer).
CHALLENGE_SP_SETTINGS = dict(
    model_type="bpe",
    character_coverage=0.999,
    byte_fallback=True,
    split_digits=True,
    normalization_rule_name="nmt_nfkc",
    add_dummy_prefix=False,
    pad_id=0,
    bos_id=1,
    eos_id=2,
    unk_id=3,
    hard_vocab_limit=False,
)
MAX_SENTENCE_BYTES = 4192
"""SentencePiece's default max_sentence_length: its trainer skips longer sentences (UTF-8 bytes), as the
challenge's does; they are dropped here before they reach it, which trains the same model."""
LONG_DOC_CHARS = 2**18
"""Documents longer than this are encoded in pieces of about this many characters (`plan_long`)."""
_CUT = re.compile(r"(?<=\S) (?=[^\W_])")
_LEAD = "a"


def trainer_text(text: str) -> str:
    """What the challenge feeds the tokenizer trainer for one document (NULs to spaces, stripped)."""
    return text.replace("\x00", " ").strip()


def trainer_sentence(text: str) -> str | None:
    """`trainer_text`, or None where SentencePiece's trainer would skip it (empty, over MAX_SENTENCE_BYTES)."""
    t = trainer_text(text)
    if not t or len(t) > MAX_SENTENCE_BYTES or len(t.encode("utf-8")) > MAX_SENTENCE_BYTES:
        return None
    return t


class _Feed:
    """The sentence iterator handed to SentencePiece, keeping any exception it raised (the trainer turns
    one into a multi-line RuntimeError; the original is re-raised instead)."""

    def __init__(self, texts: Iterable[str]):
        self.sentences = (t for t in map(trainer_sentence, texts) if t is not None)
        self.error: BaseException | None = None

    def __iter__(self) -> _Feed:
        return self

    def __next__(self) -> str:
        try:
            return next(self.sentences)
        except StopIteration:
            raise
        except BaseException as exc:
            self.error = exc
            raise


def train_tokenizer(texts: Iterable[str], vocab_size: int, model_prefix: str | os.PathLike,
                    num_threads: int | None = None) -> Path:
    """Train a BPE model with the challenge's settings; returns the .model path.

    Like the challenge's exporter, every document (validation included, in file order) is a
    training sentence after `trainer_text`; empty ones are skipped, and so are those longer than
    SentencePiece's max_sentence_length (4192 bytes), which its trainer skips too. Memory: a long document
    never reaches the trainer; the trainer holds every sentence it is fed (each at most 4192 bytes), so its
    memory follows the corpus's short documents, as the challenge's exporter's does (input_sentence_size is
    left at the challenge's setting, all sentences: sampling would train another tokenizer).
    """
    prefix = Path(model_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    feed = _Feed(texts)
    kwargs = dict(CHALLENGE_SP_SETTINGS, sentence_iterator=feed, model_prefix=str(prefix),
                  vocab_size=int(vocab_size), minloglevel=2)
    if num_threads:
        kwargs["num_threads"] = int(num_threads)
    try:
        spm.SentencePieceTrainer.train(**kwargs)
    except RuntimeError as exc:
        if feed.error is not None:
            raise feed.error from None
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise TokenizerError(f"tokenizer training failed for vocab size {vocab_size}: {first}") from None
    if feed.error is not None:
        raise feed.error
    return prefix.with_suffix(".model")


def normalized_text(sp, text: str) -> str:
    """The text as the tokenizer normalizes it (the byte basis of BPB): nmt_nfkc, whitespace collapsed."""
    return sp.normalize(text).replace(SPACE, " ")


def normalized_utf8_len(normalized: str) -> int:
    """UTF-8 bytes of `normalized_text` from `sp.normalize`'s output (each 3-byte U+2581 counts as 1 space);
    encoded in pieces of LONG_DOC_CHARS, so a long document is not copied whole once more."""
    step = LONG_DOC_CHARS
    total = sum(len(normalized[i:i + step].encode("utf-8")) for i in range(0, len(normalized), step))
    return total - 2 * normalized.count(SPACE)


def word_local(sp) -> bool:
    """True when no piece spans a word boundary (U+2581 only ever first in a piece), so BPE merges never
    cross one and a text split before a U+2581 of its normalized form encodes as the concatenation."""
    for i in range(sp.get_piece_size()):
        if not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i)) and SPACE in sp.id_to_piece(i)[1:]:
            return False
    return True


def long_cuts(text: str, piece_chars: int = LONG_DOC_CHARS) -> list[tuple[int, int]]:
    """Spans of `text` cut before a space (between a non-space character and a letter or digit) about
    every `piece_chars`; every span after the first starts with that space."""
    spans, start = [], 0
    while len(text) - start > piece_chars:
        m = _CUT.search(text, start + piece_chars)
        if m is None:
            break
        spans.append((start, m.start()))
        start = m.start()
    spans.append((start, len(text)))
    return spans


def plan_long(sp, text: str, normalized: str, *, word_local_model: bool,
              piece_chars: int = LONG_DOC_CHARS) -> list[tuple[int, int]]:
    """The spans `encode_spans` encodes `text` in: `long_cuts`, kept only where that is exact, else the whole.

    The normalizer drops a leading space, so every piece after the first is encoded behind a one-letter
    lead (`_LEAD`, "a") whose ids are then removed. Exact when the model is `word_local` (no merge crosses
    a U+2581) and each piece's normalized form, less the lead's, begins with U+2581 and is its share of
    `normalized` (= sp.normalize(text)); a document without cuts, or an unusual model, is one span."""
    whole = [(0, len(text))]
    spans = long_cuts(text, piece_chars) if word_local_model else whole
    if len(spans) == 1:
        return whole
    lead = sp.normalize(_LEAD) + SPACE
    pos = 0
    for k, (start, end) in enumerate(spans):
        n = sp.normalize(text[start:end] if k == 0 else _LEAD + text[start:end])
        if k:
            if not n.startswith(lead):
                return whole
            n = n[len(lead) - 1:]
        if not normalized.startswith(n, pos):
            return whole
        pos += len(n)
    return spans if pos == len(normalized) else whole


def encode_spans(sp, text: str, spans: list[tuple[int, int]], threads: int = 1) -> Iterator[list[int]]:
    """The ids of `sp.encode(text)` as consecutive lists, one per span of `plan_long` (`threads` at a time)."""
    lead_ids = sp.encode(_LEAD, out_type=int)
    for i in range(0, len(spans), max(1, threads)):
        part = spans[i:i + max(1, threads)]
        batch = [text[a:b] if a == 0 else _LEAD + text[a:b] for a, b in part]
        for (a, _), ids in zip(part, sp.encode(batch, out_type=int, num_threads=threads), strict=True):
            if a == 0:
                yield ids
            elif ids[:len(lead_ids)] == lead_ids:
                yield ids[len(lead_ids):]
            else:  # impossible for a word-local model: refuse rather than guess
                raise TokenizerError(f"encoding a long document in pieces: the lead {_LEAD!r} encoded as "
                                     f"{ids[:len(lead_ids)]}, alone as {lead_ids}")
