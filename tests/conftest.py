"""Shared fixtures: a tiny tokenizer and tiny shards built in-session from the embedded corpus."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _restore_torch_state():
    """Each test starts with float32 default dtype and leaves no process group behind."""
    dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(dtype)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@pytest.fixture
def one_thread():
    """Run a test with one torch thread (exact float64 comparisons, less contention)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def clean_env(monkeypatch):
    """Remove every PGOLF_ and challenge-named variable so config tests see only what they set."""
    from pgolf.config import LEGACY_ENV

    for name in list(os.environ):
        if name.startswith("PGOLF_") or name in LEGACY_ENV:
            monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture(scope="session")
def tiny_docs(tmp_path_factory) -> Path:
    """A small JSONL corpus: the embedded corpus's 143 validation documents, then 200 training ones."""
    import itertools
    import json

    from pgolf.tools.data.docs import iter_docs

    p = tmp_path_factory.mktemp("docs") / "tiny.jsonl"
    with p.open("w", encoding="utf-8") as fh:
        for text in itertools.islice(iter_docs(["default"]), 343):
            fh.write(json.dumps({"text": text}) + "\n")
    return p


@pytest.fixture(scope="session")
def tiny_data(tiny_docs, tmp_path_factory):
    """Prepared tiny dataset (vocab 512, 100k-token shards): returns the prepare() manifest + root."""
    from pgolf.tools.data.prepare import prepare

    root = tmp_path_factory.mktemp("tinydata")
    manifest = prepare([tiny_docs], root, val_docs=143, vocab_size=512, shard_tokens=100_000, progress=False,
                       log=lambda *a: None)
    manifest["root"] = root
    manifest["dataset_dir"] = root / manifest["dataset_path"]
    manifest["tokenizer"] = root / manifest["tokenizer_path"]
    return manifest


