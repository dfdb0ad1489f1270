"""SentencePiece tokenizer: the challenge's training settings and its byte lookup tables.

Bits per byte charges each scored target y_t (preceded by input token x_t) with (docs/DESIGN.md#data-bpb)::

    bytes_t = base_bytes[y_t] + (1 if has_leading_space[y_t] and not is_boundary[x_t] else 0)

- is_boundary[id]:     control / unknown / unused pieces (pad, bos, eos, unk) and ids beyond the
                       SentencePiece vocabulary;
- base_bytes[id]:      0 for boundary ids, 1 for byte-fallback pieces, otherwise the UTF-8 length
                       of the piece without one leading U+2581;
- has_leading_space:   the piece starts with U+2581.

The bytes are those of the *normalized* text (nmt_nfkc collapses whitespace). `target_bytes` is the
single implementation of the rule; every scorer and `pgolf data verify` call it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch

from pgolf.errors import PgolfError

SPACE = "\u2581"


class TokenizerError(PgolfError, ValueError):
    """A tokenizer that cannot be loaded or used; one line naming the file."""


def load_tokenizer(path: str | os.PathLike):
    """Load a SentencePiece model, with a one-line error naming the file on failure."""
    p = Path(path)
    if not p.is_file():
        raise TokenizerError(f"{p}: tokenizer model not found")
    try:
        return spm.SentencePieceProcessor(model_file=str(p))
    except Exception as exc:  # sentencepiece raises OSError/RuntimeError with long messages
        raise TokenizerError(f"{p}: not a SentencePiece model ({type(exc).__name__})") from None


def check_vocab(sp, path: str | os.PathLike, vocab_size: int):
    """`sp` if its vocabulary fits the model's (every id it can produce is < model.vocab_size); else one
    TokenizerError line naming the file."""
    if int(sp.vocab_size()) > vocab_size:
        raise TokenizerError(f"{path}: tokenizer vocabulary {sp.vocab_size()} is larger than model.vocab_size="
                             f"{vocab_size} (use the tokenizer the data was prepared with, or set model.vocab_size)")
    return sp


@dataclass(frozen=True)
class ByteLUTs:
    base_bytes: np.ndarray  # (table,) int64
    has_leading_space: np.ndarray  # (table,) bool
    is_boundary: np.ndarray  # (table,) bool

    @property
    def size(self) -> int:
        return len(self.base_bytes)


def build_byte_luts(sp, vocab_size: int | None = None) -> ByteLUTs:
    """The three lookup tables, of length max(sp vocab, model vocab)."""
    n_sp = int(sp.vocab_size())
    size = max(n_sp, int(vocab_size or 0))
    base = np.zeros(size, dtype=np.int64)
    lead = np.zeros(size, dtype=bool)
    boundary = np.ones(size, dtype=bool)
    for i in range(n_sp):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            continue
        boundary[i] = False
        if sp.is_byte(i):
            base[i] = 1
            continue
        piece = sp.id_to_piece(i)
        if piece.startswith(SPACE):
            lead[i] = True
            piece = piece[1:]
        base[i] = len(piece.encode("utf-8"))
    return ByteLUTs(base, lead, boundary)


def target_bytes(luts: ByteLUTs, prev_ids: np.ndarray, target_ids: np.ndarray) -> np.ndarray:
    """Bytes charged to each target (int64), given the token before it. Works on numpy arrays."""
    prev = np.asarray(prev_ids, dtype=np.int64)
    tgt = np.asarray(target_ids, dtype=np.int64)
    return luts.base_bytes[tgt] + (luts.has_leading_space[tgt] & ~luts.is_boundary[prev]).astype(np.int64)


def target_bytes_torch(luts_t: dict, prev_ids, target_ids):
    """Torch twin of `target_bytes` for scorers on the device; luts_t from `luts_to_torch`."""
    base = luts_t["base_bytes"][target_ids]
    extra = luts_t["has_leading_space"][target_ids] & ~luts_t["is_boundary"][prev_ids]
    return base + extra.to(base.dtype)


def luts_to_torch(luts: ByteLUTs, device=None) -> dict:
    return {
        "base_bytes": torch.as_tensor(luts.base_bytes, dtype=torch.int64, device=device),
        "has_leading_space": torch.as_tensor(luts.has_leading_space, dtype=torch.bool, device=device),
        "is_boundary": torch.as_tensor(luts.is_boundary, dtype=torch.bool, device=device),
    }


def stream_target_bytes(luts: ByteLUTs, stream: np.ndarray, chunk: int = 1 << 22) -> int:
    """Total bytes of all targets stream[1:] (each preceded by stream[t-1]), in chunks."""
    total = 0
    for start in range(1, len(stream), chunk):
        end = min(start + chunk, len(stream))
        total += int(target_bytes(luts, stream[start - 1:end - 1], stream[start:end]).sum())
    return total
