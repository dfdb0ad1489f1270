"""`pgolf data prepare`: documents -> tokenizer + challenge-format shards + manifest.

Reproduces the challenge's exporter (data/download_hf_docs_and_tokenize.py): the first N documents
are the validation split; the tokenizer is trained on every document (after replacing NULs and
stripping) with the challenge's SentencePiece settings; each document is encoded from its raw text
and prefixed with BOS (no EOS); tokens are packed into shards of exactly `shard_tokens` (the last
one of each split shorter), documents may span shard boundaries, and the split change flushes the
current shard. Given the same documents, the output is byte-identical to the challenge's (a test
checks the shard sha256 against an export made by the challenge's own exporter).

Every document is read and checked before anything is written (`docs.iter_file`: the first bad one is
named by file and line). Documents are then read twice more, streaming (tokenizer training, encoding);
a document longer than `spm.LONG_DOC_CHARS` is encoded in pieces that give exactly its ids
(`spm.plan_long`), so memory follows a few copies of the longest document, not its token list.
Shards are staged in OUT/.prepare-PID.tmp and moved into place when all are written; a failure removes
what the run wrote and restores what it replaced (`Staging`).

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
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from pgolf.data.shards import sha256_file, shard_name, write_shard
from pgolf.data.tokenizer import load_tokenizer
from pgolf.errors import PgolfError
from pgolf.files import atomic_write_json
from pgolf.telemetry import Progress
from pgolf.tools.data.docs import doc_hash, iter_docs
from pgolf.tools.data.spm import (
    LONG_DOC_CHARS,
    MAX_SENTENCE_BYTES,
    encode_spans,
    normalized_utf8_len,
    plan_long,
    train_tokenizer,
    trainer_sentence,
    word_local,
)

DEFAULT_SHARD_TOKENS = 100_000_000
MANIFEST_NAME = "manifest.json"
DOC_HASHES_NAME = "doc_hashes.json"
MANIFEST_FORMAT = "pgolf-data-1"
BATCH_CHARS = 2**22
"""A batch of short documents is encoded in one call up to this many characters (or `batch_docs`)."""
STAGING_PREFIX = ".prepare-"


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

    # 1. Everything that would be overwritten, the tokenizer to reuse and every document are checked
    #    first, so a refused run writes nothing.
    sp = None
    if tokenizer is not None:
        sp = load_tokenizer(tokenizer)
        v = int(sp.vocab_size())
        if vocab_size is not None and v != vocab_size:
            raise PrepareError(f"{tokenizer}: tokenizer has vocab size {v}, but --vocab-size is {vocab_size}")
        if int(sp.bos_id()) < 0:
            raise PrepareError(f"{tokenizer}: tokenizer has no BOS id; every document must start with BOS")
        vocab_size = v
    assert vocab_size is not None
    if vocab_size > 65536:
        raise PrepareError(f"vocab size {vocab_size} does not fit the uint16 shard format")
    model_path = out / "tokenizers" / tokenizer_file_name(name, vocab_size)
    same_file = tokenizer is not None and Path(tokenizer).resolve() == model_path.resolve()
    ds_dir = out / "datasets" / dataset_dir_name(name, tag, vocab_size)
    existing = sorted(ds_dir.glob("fineweb_*.bin")) if ds_dir.is_dir() else []
    if existing and not force:
        raise PrepareError(f"{ds_dir}: already holds {len(existing)} shards; use --force to replace them")
    if not same_file:
        _check_free(model_path, force)
    n_docs, n_sentences = _check_docs(docs, progress)
    if n_docs < val_docs:
        raise PrepareError(f"--val-docs {val_docs} exceeds the {n_docs} documents in {', '.join(map(str, docs))}")
    if tokenizer is None and n_sentences == 0:
        raise PrepareError(f"no document can train the tokenizer: each is empty or longer than {MAX_SENTENCE_BYTES} "
                           f"UTF-8 bytes (SentencePiece's max_sentence_length)")

    # 2. Tokenizer, then shards in a staging folder: they replace the old ones only once all are written.
    with Staging(out) as stage:
        if tokenizer is not None:
            if not same_file:
                stage.stage_copy(tokenizer, model_path)
                vocab_src = Path(tokenizer).with_suffix(".vocab")
                if vocab_src.is_file():
                    stage.stage_copy(vocab_src, model_path.with_suffix(".vocab"))
            log(f"tokenizer: reusing {tokenizer} (vocab {vocab_size}) -> {model_path}")
        else:
            log(f"tokenizer: training SentencePiece BPE, vocab {vocab_size}, on every document ...")
            stage.mkdir(model_path.parent)
            for f in (model_path, model_path.with_suffix(".vocab")):
                stage.replace_now(f)
            train_tokenizer(iter_docs(docs), vocab_size, model_path.with_suffix(""), num_threads=threads)
            sp = load_tokenizer(model_path)
            log(f"tokenizer: wrote {model_path} ({time.monotonic() - t0:.1f}s)")
        bos = int(sp.bos_id())
        if bos < 0:
            raise PrepareError(f"{model_path}: tokenizer has no BOS id; every document must start with BOS")
        enc = _Encoder(sp, stage.dir / "shards", shard_tokens, vocab_size, val_docs, threads)
        with Progress("prepare: encoding", unit="docs", enabled=progress) as bar:
            batch: list[str] = []
            chars = 0
            for text in iter_docs(docs):
                if len(text) > LONG_DOC_CHARS:
                    enc.add_batch(batch)
                    bar.update(len(batch) + 1)
                    batch, chars = [], 0
                    enc.add_long(text)
                    continue
                batch.append(text)
                chars += len(text)
                if len(batch) == batch_docs or chars > BATCH_CHARS:
                    enc.add_batch(batch)
                    bar.update(len(batch))
                    batch, chars = [], 0
            enc.add_batch(batch)
            bar.update(len(batch))
            enc.writer.flush()
        stats, writer, hashes = enc.stats, enc.writer, enc.hashes
        manifest = {
            "format": MANIFEST_FORMAT,
            "name": name,
            "dataset": dataset_dir_name(name, tag, vocab_size),
            "dataset_path": ds_dir.relative_to(out).as_posix(),
            "tokenizer_path": model_path.relative_to(out).as_posix(),
            "tokenizer_sha256": sha256_file(stage.staged(model_path)),
            "tokenizer_trained": tokenizer is None,
            "vocab_size": vocab_size,
            "bos_id": bos,
            "append_eos": False,
            "shard_tokens": shard_tokens,
            "num_val_docs": val_docs,
            "sources": [str(d) for d in docs],
            "stats": {**stats, "files_val": writer.index["val"], "files_train": writer.index["train"]},
            "val_normalized_text_bytes": enc.val_text_bytes,
            "docs_hashes_file": DOC_HASHES_NAME,
            "val_docs_digest": _digest(hashes["val"]),
            "train_docs_digest": _digest(hashes["train"]),
            "shards": writer.files,
        }
        stage.commit(ds_dir, list(writer.files), existing,
                     [(out / DOC_HASHES_NAME, hashes), (out / MANIFEST_NAME, manifest)])
    if stats["docs_val"] == 0:
        log("warning: no validation documents (--val-docs 0): nothing can be scored on this data")
    if stats["docs_train"] == 0:
        log("warning: no training documents: all documents went to the validation split")
    log(f"prepare: {stats['docs_val']} val docs ({stats['tokens_val']} tokens, {writer.index['val']} shards), "
        f"{stats['docs_train']} train docs ({stats['tokens_train']} tokens, {writer.index['train']} shards) "
        f"-> {ds_dir} in {time.monotonic() - t0:.1f}s")
    return manifest


def _check_docs(docs: Sequence[str | os.PathLike], progress: bool) -> tuple[int, int]:
    """Read every document once (DocsError at the first bad one); -> (documents, tokenizer training sentences)."""
    n_docs = n_sentences = 0
    with Progress("prepare: checking documents", unit="docs", enabled=progress) as bar:
        for text in iter_docs(docs):
            n_docs += 1
            n_sentences += trainer_sentence(text) is not None
            bar.update(1)
    return n_docs, n_sentences


class _Encoder:
    """Documents -> BOS + ids -> shards, with the statistics and fingerprints of the manifest."""

    def __init__(self, sp, shard_dir: Path, shard_tokens: int, vocab_size: int, val_docs: int, threads: int):
        self.sp, self.vocab_size, self.val_docs, self.threads = sp, vocab_size, val_docs, threads
        self.bos = int(sp.bos_id())
        self.word_local = word_local(sp)
        self.writer = _ShardWriter(shard_dir, shard_tokens)
        self.stats = dict(docs_total=0, docs_val=0, docs_train=0, tokens_total=0, tokens_val=0, tokens_train=0)
        self.hashes: dict[str, list[str]] = {"val": [], "train": []}
        self.val_text_bytes = 0  # UTF-8 bytes of the normalized validation text (computed from the raw text)

    def add_batch(self, texts: list[str]) -> None:
        if not texts:
            return
        encoded = self.sp.encode(texts, out_type=int, num_threads=self.threads)
        for text, ids in zip(texts, encoded, strict=True):
            self._add(text, [ids], None)

    def add_long(self, text: str) -> None:
        """One long document, encoded in pieces (exactly as in one call) to bound memory."""
        normalized = self.sp.normalize(text)
        nbytes = normalized_utf8_len(normalized)
        spans = plan_long(self.sp, text, normalized, word_local_model=self.word_local)
        del normalized  # not held while encoding
        self._add(text, encode_spans(self.sp, text, spans, self.threads), nbytes)

    def _add(self, text: str, id_lists: Iterable[list[int]], normalized_bytes: int | None) -> None:
        split = "val" if self.stats["docs_total"] < self.val_docs else "train"
        n, first = 0, 1
        for ids in id_lists:
            toks = np.empty(len(ids) + first, dtype=np.int64)
            toks[0:first] = self.bos
            toks[first:] = ids
            if len(ids) and (toks.max() >= self.vocab_size or toks.min() < 0):
                raise PrepareError(f"document {self.stats['docs_total']}: token id outside vocab {self.vocab_size}")
            self.writer.add(split, toks.astype(np.uint16))
            n += len(toks)
            first = 0
        if first:  # no ids at all: the document is its BOS
            self.writer.add(split, np.array([self.bos], dtype=np.uint16))
            n = 1
        self.stats["docs_total"] += 1
        self.stats[f"docs_{split}"] += 1
        self.stats["tokens_total"] += n
        self.stats[f"tokens_{split}"] += n
        self.hashes[split].append(doc_hash(text))
        if split == "val":
            if normalized_bytes is None:
                normalized_bytes = normalized_utf8_len(self.sp.normalize(text))
            self.val_text_bytes += normalized_bytes


def _check_free(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise PrepareError(f"{path}: already exists; use --force to replace it")


def _digest(hashes: list[str]) -> str:
    return hashlib.sha256("".join(hashes).encode()).hexdigest()


class Staging:
    """What one run writes under OUT, undone on failure.

    Shards (and a reused tokenizer's copy) are written to OUT/.prepare-PID.tmp and moved into place by
    `commit` once all are complete; files replaced early (the trained tokenizer, written where the
    challenge's exporter writes it) are moved aside first. On any exception (a bad document found late,
    a full disk, Ctrl-C) everything new is removed, what was moved aside is put back, and the folders
    this run created are removed: no partial shards, no manifest describing missing ones."""

    def __init__(self, out: Path):
        self.out = out
        self.dir = out / f"{STAGING_PREFIX}{os.getpid()}.tmp"
        self.created: list[Path] = []  # folders this run made, parents first
        self.new: list[Path] = []  # files at their final place that did not exist before this run
        self.moved: list[tuple[Path, Path]] = []  # (final place, where the old file waits)
        self.copies: list[tuple[Path, Path]] = []  # (staged copy, final place)

    def mkdir(self, d: Path) -> None:
        missing = []
        while not d.exists():
            missing.append(d)
            d = d.parent
        for m in reversed(missing):
            m.mkdir()
            self.created.append(m)

    def __enter__(self) -> Staging:
        self.mkdir(self.out)
        self.dir.mkdir()
        (self.dir / "old").mkdir()
        return self

    def replace_now(self, path: Path) -> None:
        """`path` is about to be (re)written in place: move an existing file aside, remember the new one."""
        if path.exists():
            aside = self.dir / "old" / f"{len(self.moved)}-{path.name}"
            os.replace(path, aside)
            self.moved.append((path, aside))
        self.new.append(path)

    def stage_copy(self, src: str | os.PathLike, dst: Path) -> None:
        staged = self.dir / f"copy-{len(self.copies)}-{dst.name}"
        shutil.copyfile(src, staged)
        self.copies.append((staged, dst))

    def staged(self, dst: Path) -> Path:
        """Where `dst`'s content is now (its staged copy until commit)."""
        return next((s for s, d in self.copies if d == dst), dst)

    def commit(self, ds_dir: Path, shard_names: list[str], existing: list[Path],
               jsons: list[tuple[Path, object]]) -> None:
        """Old shards, manifest and fingerprints aside, then the new ones into place (the manifest last)."""
        for f in [*existing, *(p for p, _ in jsons)]:
            self.replace_now(f)
        self.mkdir(ds_dir)
        for staged, dst in self.copies:
            self.mkdir(dst.parent)
            self.replace_now(dst)
            os.replace(staged, dst)
        for shard in shard_names:
            self.replace_now(ds_dir / shard)
            os.replace(self.dir / "shards" / shard, ds_dir / shard)
        for path, obj in jsons:
            atomic_write_json(path, obj)

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            for f in reversed(self.new):
                f.unlink(missing_ok=True)
            for path, aside in reversed(self.moved):
                os.replace(aside, path)
        shutil.rmtree(self.dir, ignore_errors=True)
        if exc_type is not None:
            for d in reversed(self.created):
                try:
                    d.rmdir()
                except OSError:
                    pass
