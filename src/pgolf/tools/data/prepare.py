"""`pgolf data prepare`: documents -> tokenizer + challenge-format shards + manifest.

Reproduces the challenge's exporter (data/download_hf_docs_and_tokenize.py): the first N documents
are the validation split; the tokenizer is trained on every document (after replacing NULs and
stripping) with the challenge's SentencePiece settings; each document is encoded from its raw text
and prefixed with BOS (no EOS); tokens are packed into shards of exactly `shard_tokens` (the last
one of each split shorter), documents may span shard boundaries, and the split change flushes the
current shard. Given the same documents, the output is byte-identical to the challenge's (a test
checks the shard sha256 against an export made by the challenge's own exporter).

Layout written under OUT::

    OUT/tokenizers/{name}_{V}_bpe.model (+ .vocab when trained)
    OUT/datasets/{name}{tag}_sp{V}/fineweb_{val,train}_NNNNNN.bin
    OUT/manifest.json      counts, settings and the sha256 of every shard
    OUT/doc_hashes.json    16-hex fingerprints of every document, per split (train/val disjointness)
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pgolf.data.shards import sha256_file, shard_name, write_shard
from pgolf.data.tokenizer import load_tokenizer
from pgolf.errors import PgolfError
from pgolf.files import atomic_write_json
from pgolf.telemetry import Progress
from pgolf.tools.data.docs import doc_hash, iter_docs
from pgolf.tools.data.spm import normalized_text, train_tokenizer

DEFAULT_SHARD_TOKENS = 100_000_000
MANIFEST_NAME = "manifest.json"
DOC_HASHES_NAME = "doc_hashes.json"
MANIFEST_FORMAT = "pgolf-data-1"


class PrepareError(PgolfError, ValueError):
    pass


def dataset_dir_name(name: str, tag: str, vocab_size: int) -> str:
    return f"{name}{tag}_sp{vocab_size}"


def tokenizer_file_name(name: str, vocab_size: int) -> str:
    return f"{name}_{vocab_size}_bpe.model"


class _ShardWriter:
    """Packs documents into fixed-size shards per split, exactly like the challenge's exporter."""

    def __init__(self, out_dir: Path, shard_tokens: int):
        self.out_dir = out_dir
        self.shard_tokens = shard_tokens
        self.buf = np.empty(shard_tokens, dtype=np.uint16)
        self.fill = 0
        self.split = "val"
        self.index = {"val": 0, "train": 0}
        self.files: dict[str, dict] = {}

    def flush(self) -> None:
        if self.fill == 0:
            return
        name = shard_name(self.split, self.index[self.split])
        sha = write_shard(self.out_dir / name, self.buf[:self.fill])
        self.files[name] = {"split": self.split, "tokens": int(self.fill), "sha256": sha}
        self.index[self.split] += 1
        self.fill = 0

    def add(self, split: str, toks: np.ndarray) -> None:
        if split != self.split:
            self.flush()
            self.split = split
        pos = 0
        while pos < len(toks):
            take = min(self.shard_tokens - self.fill, len(toks) - pos)
            self.buf[self.fill:self.fill + take] = toks[pos:pos + take]
            self.fill += take
            pos += take
            if self.fill == self.shard_tokens:
                self.flush()


def prepare(docs: Sequence[str | os.PathLike], out: str | os.PathLike, *, val_docs: int, vocab_size: int | None,
            name: str = "fineweb", tag: str = "10B", shard_tokens: int = DEFAULT_SHARD_TOKENS,
            tokenizer: str | os.PathLike | None = None, force: bool = False, progress: bool = True,
            batch_docs: int = 256, threads: int | None = None, log=print) -> dict:
    """Run the whole preparation; returns the manifest dict (also written to OUT/manifest.json)."""
    if val_docs < 0:
        raise PrepareError(f"--val-docs must be >= 0, got {val_docs}")
    if shard_tokens < 1:
        raise PrepareError(f"--shard-tokens must be >= 1, got {shard_tokens}")
    if tokenizer is None and vocab_size is None:
        raise PrepareError("--vocab-size is required unless --tokenizer reuses an existing model")
    out = Path(out)
    threads = threads or max(1, os.cpu_count() or 1)
    t0 = time.monotonic()

    # 1. Tokenizer: train with the challenge's settings, or reuse the given model. Everything that would
    #    be overwritten is checked first, so a refused run writes nothing.
    tok_dir = out / "tokenizers"
    sp = None
    if tokenizer is not None:
        sp = load_tokenizer(tokenizer)
        v = int(sp.vocab_size())
        if vocab_size is not None and v != vocab_size:
            raise PrepareError(f"{tokenizer}: tokenizer has vocab size {v}, but --vocab-size is {vocab_size}")
        vocab_size = v
    assert vocab_size is not None
    if vocab_size > 65536:
        raise PrepareError(f"vocab size {vocab_size} does not fit the uint16 shard format")
    model_path = tok_dir / tokenizer_file_name(name, vocab_size)
    same_file = tokenizer is not None and Path(tokenizer).resolve() == model_path.resolve()
    ds_dir = out / "datasets" / dataset_dir_name(name, tag, vocab_size)
    existing = sorted(ds_dir.glob("fineweb_*.bin")) if ds_dir.is_dir() else []
    if existing and not force:
        raise PrepareError(f"{ds_dir}: already holds {len(existing)} shards; use --force to replace them")
    if not same_file:
        _check_free(model_path, force)
    tok_dir.mkdir(parents=True, exist_ok=True)
    if tokenizer is not None:
        if not same_file:
            shutil.copyfile(tokenizer, model_path)
            vocab_src = Path(tokenizer).with_suffix(".vocab")
            if vocab_src.is_file():
                shutil.copyfile(vocab_src, model_path.with_suffix(".vocab"))
        log(f"tokenizer: reusing {tokenizer} (vocab {vocab_size}) -> {model_path}")
    else:
        log(f"tokenizer: training SentencePiece BPE, vocab {vocab_size}, on every document ...")
        train_tokenizer(iter_docs(docs), vocab_size, model_path.with_suffix(""), num_threads=threads)
        sp = load_tokenizer(model_path)
        log(f"tokenizer: wrote {model_path} ({time.monotonic() - t0:.1f}s)")
    bos = int(sp.bos_id())
    if bos < 0:
        raise PrepareError(f"{model_path}: tokenizer has no BOS id; every document must start with BOS")

    # 2. Shards.
    for f in existing:
        f.unlink()
    ds_dir.mkdir(parents=True, exist_ok=True)
    writer = _ShardWriter(ds_dir, shard_tokens)
    stats = dict(docs_total=0, docs_val=0, docs_train=0, tokens_total=0, tokens_val=0, tokens_train=0)
    hashes: dict[str, list[str]] = {"val": [], "train": []}
    val_text_bytes = 0  # UTF-8 bytes of the normalized validation text (computed from the raw text)
    with Progress("prepare: encoding", unit="docs", enabled=progress) as bar:
        batch: list[str] = []

        def encode_batch(texts: list[str]) -> None:
            nonlocal val_text_bytes
            encoded = sp.encode(texts, out_type=int, num_threads=threads)
            for text, ids in zip(texts, encoded, strict=True):
                split = "val" if stats["docs_total"] < val_docs else "train"
                toks = np.empty(len(ids) + 1, dtype=np.int64)
                toks[0] = bos
                toks[1:] = ids
                if len(ids) and (toks.max() >= vocab_size or toks.min() < 0):
                    raise PrepareError(f"document {stats['docs_total']}: token id outside vocab {vocab_size}")
                writer.add(split, toks.astype(np.uint16))
                stats["docs_total"] += 1
                stats[f"docs_{split}"] += 1
                stats["tokens_total"] += len(toks)
                stats[f"tokens_{split}"] += len(toks)
                hashes[split].append(doc_hash(text))
                if split == "val":
                    val_text_bytes += len(normalized_text(sp, text).encode("utf-8"))
            bar.update(len(texts))

        for text in iter_docs(docs):
            batch.append(text)
            if len(batch) == batch_docs:
                encode_batch(batch)
                batch = []
        if batch:
            encode_batch(batch)
        writer.flush()
    if stats["docs_total"] < val_docs:
        raise PrepareError(f"--val-docs {val_docs} exceeds the {stats['docs_total']} documents read")
    if stats["docs_val"] == 0:
        log("warning: no validation documents (--val-docs 0): nothing can be scored on this data")
    if stats["docs_train"] == 0:
        log("warning: no training documents: all documents went to the validation split")

    manifest = {
        "format": MANIFEST_FORMAT,
        "name": name,
        "dataset": dataset_dir_name(name, tag, vocab_size),
        "dataset_path": ds_dir.relative_to(out).as_posix(),
        "tokenizer_path": model_path.relative_to(out).as_posix(),
        "tokenizer_sha256": sha256_file(model_path),
        "tokenizer_trained": tokenizer is None,
        "vocab_size": vocab_size,
        "bos_id": bos,
        "append_eos": False,
        "shard_tokens": shard_tokens,
        "num_val_docs": val_docs,
        "sources": [str(d) for d in docs],
        "stats": {**stats, "files_val": writer.index["val"], "files_train": writer.index["train"]},
        "val_normalized_text_bytes": val_text_bytes,
        "docs_hashes_file": DOC_HASHES_NAME,
        "val_docs_digest": _digest(hashes["val"]),
        "train_docs_digest": _digest(hashes["train"]),
        "shards": writer.files,
    }
    atomic_write_json(out / DOC_HASHES_NAME, hashes)
    atomic_write_json(out / MANIFEST_NAME, manifest)
    log(f"prepare: {stats['docs_val']} val docs ({stats['tokens_val']} tokens, {writer.index['val']} shards), "
        f"{stats['docs_train']} train docs ({stats['tokens_train']} tokens, {writer.index['train']} shards) "
        f"-> {ds_dir} in {time.monotonic() - t0:.1f}s")
    return manifest


def _check_free(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise PrepareError(f"{path}: already exists; use --force to replace it")


def _digest(hashes: list[str]) -> str:
    return hashlib.sha256("".join(hashes).encode()).hexdigest()
