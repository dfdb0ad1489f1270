"""Regression (issue 13, item 10): `pgolf data prepare` writes nothing when the documents are bad, and a
failure half-way leaves no partial shards or manifest (what it would replace is put back).

On the landed tree (3a30210) a bad line found while encoding with --tokenizer left the full shards written
before it; with --force the old shards were deleted first and the old manifest kept describing them;
--val-docs larger than the corpus was refused only after every shard and the tokenizer were written."""

from __future__ import annotations

import hashlib
import json

import pytest

from pgolf.errors import FileWriteError
from pgolf.tools.data import prepare as prep
from pgolf.tools.data.docs import DocsError
from tests.helpers.cli_fuzz import assert_one_error, run_all
from tests.helpers.paths import shared_dir

REF_TOKENIZER = shared_dir() / "reference" / "tokenizers" / "fineweb_1024_bpe.model"


def _tree(root) -> dict[str, str]:
    """Relative path -> sha256 of every file under root (folders included as '')."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
            for p in sorted(root.rglob("*"))}


def _corpus(path, n: int, bad: bytes | None = None):
    lines = [json.dumps({"text": f"document {i}: " + "some words to encode " * 20}).encode() for i in range(n)]
    path.write_bytes(b"\n".join(lines + ([bad] if bad else [])) + b"\n")
    return path


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """Every CLI case of this module in one child, in order (the later ones build on the earlier)."""
    d = tmp_path_factory.mktemp("atomic")
    good = _corpus(d / "good.jsonl", 400)
    late_bad = _corpus(d / "late_bad.jsonl", 400, b'{"text": "ok"} trailing')
    long_only = d / "long_only.jsonl"
    long_only.write_text(json.dumps({"text": "word " * 2000}) + "\n")
    reuse = ["--tokenizer", str(REF_TOKENIZER), "--shard-tokens", "2000"]
    argv = {
        "late_bad": ["--docs", str(late_bad), "--val-docs", "10", *reuse, "--out", str(d / "o_late")],
        "ref_a": ["--docs", str(good), "--val-docs", "10", *reuse, "--out", str(d / "o_a")],
        "ref_b": ["--docs", str(good), "--val-docs", "10", *reuse, "--out", str(d / "o_b")],
        "force_bad": ["--docs", str(late_bad), "--val-docs", "10", *reuse, "--force", "--out", str(d / "o_b")],
        "val_exceeds": ["--docs", str(good), "--val-docs", "401", *reuse, "--out", str(d / "o_val")],
        "nothing_to_train": ["--docs", str(long_only), "--val-docs", "0", "--vocab-size", "300",
                             "--out", str(d / "o_train")],
    }
    runs = run_all([["data", "prepare", *a] for a in argv.values()], seconds_each=60)
    return d, dict(zip(argv, runs, strict=True)), late_bad


def test_bad_line_late_in_the_corpus_writes_no_shards(cli):
    d, r, late_bad = cli
    assert_one_error(r["late_bad"], f"{late_bad}:401:", "not valid JSON")
    assert not (d / "o_late").exists(), sorted((d / "o_late").rglob("*"))


def test_force_over_a_good_export_with_bad_documents_keeps_it_intact(cli):
    d, r, late_bad = cli
    assert r["ref_a"].returncode == 0 and r["ref_b"].returncode == 0, r["ref_b"].stderr
    assert_one_error(r["force_bad"], f"{late_bad}:401:")
    assert _tree(d / "o_b") == _tree(d / "o_a")  # shards, tokenizer, manifest and fingerprints untouched


def test_val_docs_beyond_the_corpus_is_refused_before_writing(cli):
    d, r, _ = cli
    assert_one_error(r["val_exceeds"], "--val-docs 401 exceeds the 400 documents")
    assert not (d / "o_val").exists()


def test_no_trainable_document_is_refused_before_writing(cli):
    d, r, _ = cli
    assert_one_error(r["nothing_to_train"], "no document can train the tokenizer", "4192")
    assert not (d / "o_train").exists()


# In-process: failures after the documents were checked (a disk filling up, Ctrl-C, a file changed
# between the passes) must undo the run.

KW = dict(val_docs=10, vocab_size=None, tokenizer=REF_TOKENIZER, shard_tokens=2000, progress=False,
          log=lambda *a: None)


@pytest.fixture
def exported(tmp_path):
    good = _corpus(tmp_path / "good.jsonl", 400)
    prep.prepare([good], tmp_path / "out", **KW)
    return good, tmp_path / "out", _tree(tmp_path / "out")


def _fail_on_shard(monkeypatch, n: int, exc: BaseException):
    calls = {"n": 0}
    real = prep.write_shard

    def failing(path, tokens):
        calls["n"] += 1
        if calls["n"] == n:
            raise exc
        return real(path, tokens)

    monkeypatch.setattr(prep, "write_shard", failing)
    return calls


@pytest.mark.parametrize("exc", [FileWriteError("x.bin: cannot write (No space left on device)"),
                                 KeyboardInterrupt()], ids=["disk_full", "ctrl_c"])
def test_failure_half_way_restores_the_previous_export(monkeypatch, exported, exc):
    good, out, before = exported
    calls = _fail_on_shard(monkeypatch, 5, exc)
    with pytest.raises(type(exc)):
        prep.prepare([good], out, force=True, **KW)
    assert calls["n"] == 5  # it did fail half-way: four new shards were already written
    assert _tree(out) == before
    assert not list(out.glob(f"{prep.STAGING_PREFIX}*"))


def test_failure_half_way_into_a_new_folder_leaves_nothing(monkeypatch, tmp_path):
    good = _corpus(tmp_path / "good.jsonl", 400)
    _fail_on_shard(monkeypatch, 3, FileWriteError("x: cannot write (No space left on device)"))
    with pytest.raises(FileWriteError):
        prep.prepare([good], tmp_path / "new" / "out", **KW)
    assert not (tmp_path / "new").exists()


def test_documents_changed_between_passes_undo_a_trained_tokenizer(monkeypatch, tmp_path):
    """The tokenizer is trained where the challenge's exporter writes it; a failure afterwards removes it
    (and puts back the one it replaced under --force)."""
    good = _corpus(tmp_path / "good.jsonl", 60)
    kw = dict(val_docs=5, vocab_size=300, shard_tokens=2000, progress=False, log=lambda *a: None)
    prep.prepare([good], tmp_path / "out", **kw)
    before = _tree(tmp_path / "out")
    real_iter = prep.iter_docs
    passes = {"n": 0}

    def third_pass_fails(paths):
        passes["n"] += 1
        for i, text in enumerate(real_iter(paths)):
            if passes["n"] == 3 and i == 30:
                raise DocsError(f"{good}:31: changed while being read")
            yield text

    other = tmp_path / "other.jsonl"  # other text: a different tokenizer at the same path
    other.write_text("".join(json.dumps({"text": f"zebra {i} quilt vexing jumbo " * 9}) + "\n" for i in range(60)))
    monkeypatch.setattr(prep, "iter_docs", third_pass_fails)
    with pytest.raises(DocsError, match="changed while being read"):
        prep.prepare([other], tmp_path / "out", force=True, **kw)
    assert passes["n"] == 3
    assert _tree(tmp_path / "out") == before
