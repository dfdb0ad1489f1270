"""Training a SentencePiece tokenizer with the challenge's settings, and its text normalization.

Used by `pgolf data prepare` (training) and `pgolf data verify` (the normalized text whose UTF-8 bytes
are the byte basis of BPB). The scorers only need the byte lookup tables (`pgolf.data.tokenizer`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
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



def trainer_text(text: str) -> str:
    """What the challenge feeds the tokenizer trainer for one document (NULs to spaces, stripped)."""
    return text.replace("\x00", " ").strip()


def train_tokenizer(texts: Iterable[str], vocab_size: int, model_prefix: str | os.PathLike,
                    num_threads: int | None = None) -> Path:
    """Train a BPE model with the challenge's settings; returns the .model path.

    Like the challenge's exporter, every document (validation included, in file order) is a
    training sentence after `trainer_text`; empty ones are skipped. SentencePiece itself skips
    sentences longer than its max_sentence_length (4192 bytes), as in the challenge.
    """
    prefix = Path(model_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    sentences = (t for t in (trainer_text(x) for x in texts) if t)
    kwargs = dict(CHALLENGE_SP_SETTINGS, sentence_iterator=sentences, model_prefix=str(prefix),
                  vocab_size=int(vocab_size), minloglevel=2)
    if num_threads:
        kwargs["num_threads"] = int(num_threads)
    try:
        spm.SentencePieceTrainer.train(**kwargs)
    except RuntimeError as exc:
        raise TokenizerError(f"tokenizer training failed for vocab size {vocab_size}: {exc}") from None
    return prefix.with_suffix(".model")


def normalized_text(sp, text: str) -> str:
    """The text as the tokenizer normalizes it (the byte basis of BPB): nmt_nfkc, whitespace collapsed."""
    return sp.normalize(text).replace(SPACE, " ")
