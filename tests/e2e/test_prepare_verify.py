"""`pgolf data prepare` + `pgolf data verify`, and compatibility with the challenge's own exporter."""

import json
import subprocess
import sys

import numpy as np
import pytest

from pgolf.data.shards import load_val_tokens, open_shard
from pgolf.data.tokenizer import load_tokenizer
from pgolf.tools.data.docs import DocsError, iter_docs
from pgolf.tools.data.prepare import PrepareError, prepare
from pgolf.tools.data.verify import verify
from tests.helpers.paths import shared_dir

REF = shared_dir() / "reference"
DEV = shared_dir() / "corpus" / "dev"


def test_verify_reference_export_matches_challenge_numbers():
    """The challenge's exporter output: our reader and LUT give its numbers exactly."""
    expected = json.loads((REF / "reference.json").read_text())
    rep = verify(REF, progress=False)
    assert rep.ok, rep.problems
    assert rep.val["val_tokens"] == expected["val_tokens"] == 344924
    assert rep.val["val_targets"] == expected["val_targets"] == 344923
    assert rep.val["val_target_bytes"] == expected["val_target_bytes"] == 795285
    assert rep.val["val_text_bytes"] == 795285 and rep.val["mismatched_docs"] == 0
    assert rep.val["val_docs"] == expected["val_docs"] == 143
    shas = {s["file"]: s["sha256"] for s in rep.shards}
    assert shas == expected["shards"]


def test_cli_verify_reference_json(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pgolf", "data", "verify", "--data", str(REF), "--json"],
                       capture_output=True, text=True, check=True)
    js = json.loads(r.stdout)
    assert js["ok"] and js["val_target_bytes"] == 795285 and js["val_targets"] == 344923
    assert all(s["sha256_match"] for s in js["shards"])


@pytest.mark.slow
def test_prepare_reproduces_the_reference_export_bit_for_bit(tmp_path):
    """Same documents (validation first) + same settings => identical tokenizer and shards."""
    expected = json.loads((REF / "reference.json").read_text())
    m = prepare([DEV / "val.jsonl.xz", DEV / "train.jsonl.xz"], tmp_path, val_docs=143, vocab_size=1024,
                shard_tokens=1_000_000, progress=False, log=lambda *a: None)
    ours = load_tokenizer(tmp_path / m["tokenizer_path"])
    ref = load_tokenizer(REF / "tokenizers" / "fineweb_1024_bpe.model")
    assert [ours.id_to_piece(i) for i in range(1024)] == [ref.id_to_piece(i) for i in range(1024)]
    for name, sha in expected["shards"].items():
        assert m["shards"][name]["sha256"] == sha, name
    stats = expected["export_stats"]
    for k in ("docs_total", "docs_val", "docs_train", "tokens_total", "tokens_val", "tokens_train", "files_val",
              "files_train"):
        assert m["stats"][k] == stats[k], k
    rep = verify(tmp_path, progress=False)
    assert rep.ok and rep.val["val_target_bytes"] == 795285


def test_prepare_then_verify_bytes_agree(tiny_data):
    rep = verify(tiny_data["root"], progress=False)
    assert rep.ok, rep.problems
    assert rep.val["val_target_bytes"] == rep.val["val_text_bytes"] == tiny_data["val_normalized_text_bytes"]
    assert rep.val["val_docs"] == 143
    # the same validation text as the reference, so the same normalized byte count
    assert rep.val["val_text_bytes"] == 795285


def test_prepare_layout_bos_and_split(tiny_data):
    root, ds = tiny_data["root"], tiny_data["dataset_dir"]
    assert ds == root / "datasets" / "fineweb10B_sp512"
    assert (root / "tokenizers" / "fineweb_512_bpe.model").is_file()
    sp = load_tokenizer(tiny_data["tokenizer"])
    val = load_val_tokens(ds, 512)
    docs = list(iter_docs([tiny_data["sources"][0]]))
    # every document starts with BOS, no EOS; the val stream is exactly the first 143 documents
    want = np.concatenate([[sp.bos_id()] + sp.encode(t) for t in docs[:143]])
    np.testing.assert_array_equal(val, want)
    assert not (val == sp.eos_id()).any()
    train = np.concatenate([np.asarray(open_shard(ds / n)) for n in sorted(tiny_data["shards"]) if "train" in n])
    want_train = np.concatenate([[sp.bos_id()] + sp.encode(t) for t in docs[143:]])
    np.testing.assert_array_equal(train, want_train)
    sizes = [v["tokens"] for k, v in sorted(tiny_data["shards"].items()) if "train" in k]
    assert all(s == 100_000 for s in sizes[:-1]) and 0 < sizes[-1] <= 100_000
    hashes = json.loads((root / "doc_hashes.json").read_text())
    assert len(hashes["val"]) == 143 and len(hashes["train"]) == 200
    assert not set(hashes["val"]) & set(hashes["train"])


def test_prepare_reuses_tokenizer(tmp_path, tiny_data, tiny_docs):
    m = prepare([tiny_docs], tmp_path, val_docs=143, vocab_size=None, tokenizer=tiny_data["tokenizer"],
                shard_tokens=100_000, progress=False, log=lambda *a: None)
    assert m["tokenizer_trained"] is False and m["vocab_size"] == 512
    assert m["shards"] == tiny_data["shards"]  # identical shards from the identical tokenizer
    with pytest.raises(PrepareError, match="has vocab size 512, but --vocab-size is 1024"):
        prepare([tiny_docs], tmp_path / "x", val_docs=1, vocab_size=1024, tokenizer=tiny_data["tokenizer"],
                progress=False, log=lambda *a: None)


def test_prepare_refuses_to_overwrite_without_force(tmp_path, tiny_docs, tiny_data):
    kw = dict(val_docs=143, vocab_size=None, tokenizer=tiny_data["tokenizer"], shard_tokens=100_000,
              progress=False, log=lambda *a: None)
    prepare([tiny_docs], tmp_path, **kw)
    with pytest.raises(PrepareError, match="already holds"):
        prepare([tiny_docs], tmp_path, **kw)
    prepare([tiny_docs], tmp_path, force=True, **kw)


def test_bad_documents_are_named(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"text": "ok"}\n{"txt": "no"}\n')
    with pytest.raises(DocsError, match=r"bad.jsonl:2: expected a JSON object with a string 'text' field"):
        list(iter_docs([p]))
    p.write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(DocsError, match=r"bad.jsonl:2: not valid JSON"):
        list(iter_docs([p]))
    q = tmp_path / "bad.jsonl.xz"
    q.write_bytes(b"not xz at all")
    with pytest.raises(DocsError, match="bad.jsonl.xz: not xz data"):
        list(iter_docs([q]))


def test_compressed_inputs_and_edge_documents(tmp_path):
    import gzip

    texts = [" leading space", "", "digits 0123456789", "ﬁ ligature ＡＢ", "emoji 😀", "   ", "plain text here"] * 3
    p = tmp_path / "docs.jsonl.gz"
    with gzip.open(p, "wt", encoding="utf-8") as fh:
        for t in texts:
            fh.write(json.dumps({"text": t}) + "\n")
    m = prepare([p], tmp_path / "out", val_docs=7, vocab_size=300, shard_tokens=50, progress=False,
                log=lambda *a: None)
    assert m["stats"]["docs_val"] == 7 and m["stats"]["docs_train"] == 14
    rep = verify(tmp_path / "out", progress=False)
    assert rep.ok, rep.problems
    assert rep.val["val_target_bytes"] == rep.val["val_text_bytes"] == m["val_normalized_text_bytes"]


def test_verify_reports_byte_mismatch(tmp_path, tiny_data):
    """A tokenizer whose LUT cannot describe the text (unk pieces) must be reported, not hidden."""
    import shutil

    from pgolf.data.shards import write_shard

    root = tmp_path / "d"
    shutil.copytree(tiny_data["root"], root)
    ds = root / tiny_data["dataset_path"]
    val = np.array(open_shard(ds / "fineweb_val_000000.bin"))
    val[5] = 3  # unk: 0 LUT bytes, but decodes to " \u2047 " (several bytes)
    write_shard(ds / "fineweb_val_000000.bin", val)
    rep = verify(root, progress=False, check_sha=False)
    assert not rep.ok and rep.val["mismatched_docs"] == 1
    assert any("byte accounting" in p for p in rep.problems)
    assert rep.val["mismatch_examples"][0]["stream_index"] == 0
