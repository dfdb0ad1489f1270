"""download_fineweb against a fake copy of the challenge's dataset repo, offline.

Two fakes, both driven through huggingface_hub's own code paths (nothing in pgolf is mocked):

* a populated Hub *cache* (datasets--<owner>--<name>/{blobs,refs/main,snapshots/<commit>/...}), read
  with `local_files_only=True` or with huggingface_hub's offline mode switched on;
* a tiny Hub-compatible HTTP server on 127.0.0.1 (HEAD/GET on /datasets/<repo>/resolve/<rev>/<path>
  with the X-Repo-Commit / ETag / Content-Length headers hf_hub_download needs), for the online path.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import huggingface_hub
import numpy as np
import pytest

from pgolf.data.shards import read_header, write_shard
from pgolf.tools.data.fineweb import DEFAULT_REPO, FinewebError, defaults_from_env, download_fineweb

COMMIT = "0123456789abcdef0123456789abcdef01234567"
N_VAL, N_TRAIN = 2, 5
DATA = "datasets/datasets/fineweb10B_sp1024"


def _shard_bytes(tmp: Path, seed: int, n: int = 300) -> bytes:
    toks = np.random.default_rng(seed).integers(0, 1024, size=n, dtype=np.int64)
    path = tmp / f"shard_{seed}.bin"
    write_shard(path, toks)
    return path.read_bytes()


def fake_repo(tmp: Path, *, corrupt: str | None = None, files_val: int = N_VAL,
              model_path: str = "tokenizers/fineweb_1024_bpe.model") -> dict[str, bytes]:
    """Remote path -> bytes of a small repo laid out like willdepueoai/parameter-golf."""
    work = tmp / "shard_src"
    work.mkdir(exist_ok=True)
    manifest = {
        "datasets": [
            {"name": "fineweb10B_sp1024", "tokenizer_name": "sp_bpe_1024",
             "stats": {"files_train": N_TRAIN, "files_val": files_val}},
            {"name": "fineweb10B_sp4096", "tokenizer_name": "sp_bpe_4096",
             "stats": {"files_train": 1, "files_val": 1}},
        ],
        "tokenizers": [
            {"name": "sp_bpe_1024", "model_path": model_path,
             "vocab_path": "tokenizers/fineweb_1024_bpe.vocab"},
            {"name": "sp_bpe_4096", "model_path": "tokenizers/fineweb_4096_bpe.model"},
        ],
    }
    files = {"datasets/manifest.json": json.dumps(manifest, indent=1).encode()}
    for i in range(N_VAL):
        files[f"{DATA}/fineweb_val_{i:06d}.bin"] = _shard_bytes(work, 100 + i)
    for i in range(N_TRAIN):
        files[f"{DATA}/fineweb_train_{i:06d}.bin"] = _shard_bytes(work, i, n=200 + i)
    files["datasets/tokenizers/fineweb_1024_bpe.model"] = b"fake sentencepiece model \x00\x01\x02"
    files["datasets/tokenizers/fineweb_1024_bpe.vocab"] = b"<s>\t0\n</s>\t0\n"
    if corrupt is not None:
        raw = bytearray(files[corrupt])
        raw[0:4] = (12345).to_bytes(4, "little")  # bad magic
        files[corrupt] = bytes(raw)
    return files


def populate_cache(cache_dir: Path, files: dict[str, bytes], repo_id: str = DEFAULT_REPO) -> Path:
    """Write `files` into a Hub cache the way hf_hub_download leaves it: blobs + relative symlinks."""
    repo_dir = cache_dir / ("datasets--" + repo_id.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(COMMIT)  # no trailing newline: the Hub reads it verbatim
    for remote, data in files.items():
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        pointer = repo_dir / "snapshots" / COMMIT / remote
        pointer.parent.mkdir(parents=True, exist_ok=True)
        pointer.symlink_to(os.path.relpath(blob, pointer.parent))
    return repo_dir


def expected_remotes(files: dict[str, bytes], k: int) -> list[str]:
    """What a run with train_shards=k fetches: manifest, all val shards, first k train shards, sp1024 tokenizer."""
    keep = [r for r in files if "fineweb_train_" not in r and "4096" not in r]
    return keep + [f"{DATA}/fineweb_train_{i:06d}.bin" for i in range(k)]


def on_disk(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def local_of(out: Path, remote: str) -> Path:
    return out / remote.removeprefix("datasets/")


@pytest.fixture
def no_hf_offline(monkeypatch):
    """Tests start with huggingface_hub's offline switch off, whatever the developer's environment says."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    return monkeypatch


@pytest.fixture
def cached(tmp_path, no_hf_offline):
    files = fake_repo(tmp_path)
    cache = tmp_path / "hub"
    populate_cache(cache, files)
    return files, cache


def run_local(out: Path, cache: Path, **kw):
    kw.setdefault("progress", False)
    return download_fineweb(out, cache_dir=cache, local_files_only=True, **kw)


# ---------------------------------------------------------------- from a populated cache


def test_layout_contents_and_first_k_train_shards(tmp_path, cached):
    files, cache = cached
    out = tmp_path / "data"
    summary = run_local(out, cache, train_shards=3)

    wanted = expected_remotes(files, 3)
    for remote in wanted:
        assert sha(local_of(out, remote).read_bytes()) == sha(files[remote]), remote
    assert on_disk(out) == sorted(remote.removeprefix("datasets/") for remote in wanted)  # nothing else, no temp files

    assert summary["variant"] == "sp1024" and summary["dataset"] == "fineweb10B_sp1024"
    assert summary["dataset_dir"] == str(out / "datasets" / "fineweb10B_sp1024")
    assert summary["tokenizer_path"] == str(out / "tokenizers" / "fineweb_1024_bpe.model")
    assert summary["val_shards"] == N_VAL and summary["train_shards"] == 3
    assert summary["train_shards_available"] == N_TRAIN
    assert summary["revision"] == COMMIT
    assert summary["files_fetched"] == len(wanted) and summary["files_skipped"] == 0
    assert summary["bytes_downloaded"] == sum(len(files[r]) for r in wanted)
    assert summary["offline"] is True


def test_train_shards_clamped_and_zero(tmp_path, cached):
    files, cache = cached
    summary = run_local(tmp_path / "a", cache, train_shards=1000)
    assert summary["train_shards"] == N_TRAIN
    assert len(list((tmp_path / "a" / "datasets" / "fineweb10B_sp1024").glob("fineweb_train_*.bin"))) == N_TRAIN
    summary = run_local(tmp_path / "b", cache, train_shards=0)
    assert summary["train_shards"] == 0 and summary["val_shards"] == N_VAL
    assert not list((tmp_path / "b").rglob("fineweb_train_*"))
    with pytest.raises(ValueError):
        run_local(tmp_path / "c", cache, train_shards=-1)


def test_rerun_skips_present_files_and_repairs_bad_ones(tmp_path, cached):
    files, cache = cached
    out = tmp_path / "data"
    first = run_local(out, cache, train_shards=2, max_workers=1)
    total = first["files_fetched"]
    again = run_local(out, cache, train_shards=2)
    assert again["files_fetched"] == 0 and again["files_skipped"] == total and again["bytes_downloaded"] == 0

    # a missing shard and a truncated one are fetched again; the rest stays skipped
    (out / "datasets/fineweb10B_sp1024/fineweb_val_000001.bin").unlink()
    bad = out / "datasets/fineweb10B_sp1024/fineweb_train_000000.bin"
    data = bad.read_bytes()
    bad.unlink()  # it is a hard link into the cache: never truncate it in place
    bad.write_bytes(data[:-2])
    third = run_local(out, cache, train_shards=3)  # and one more train shard
    assert third["files_fetched"] == 3 and third["files_skipped"] == total - 2
    assert read_header(bad) == len(data[1024:]) // 2
    assert sha(bad.read_bytes()) == sha(files[f"{DATA}/fineweb_train_000000.bin"])


def test_copy_mode_does_not_share_storage_with_the_cache(tmp_path, cached):
    files, cache = cached
    out = tmp_path / "data"
    run_local(out, cache, train_shards=1, link=False)
    shard = out / "datasets/fineweb10B_sp1024/fineweb_val_000000.bin"
    blob = cache / f"datasets--{DEFAULT_REPO.replace('/', '--')}" / "blobs" / sha(files[f"{DATA}/fineweb_val_000000.bin"])
    assert not shard.is_symlink() and shard.stat().st_ino != blob.stat().st_ino
    assert shard.read_bytes() == blob.read_bytes()


def test_hf_offline_mode_reads_the_cache(tmp_path, cached, no_hf_offline):
    files, cache = cached
    no_hf_offline.setenv("HF_HUB_OFFLINE", "1")
    no_hf_offline.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # huggingface_hub reads it at import
    summary = download_fineweb(tmp_path / "data", cache_dir=cache, train_shards=1, progress=False,
                               endpoint=closed_port_url())
    assert summary["offline"] is True and summary["offline_reason"] == "offline mode"
    assert summary["files_fetched"] == 1 + N_VAL + 1 + 2


def test_corrupt_shard_names_the_file_and_leaves_nothing_behind(tmp_path, no_hf_offline):
    bad = f"{DATA}/fineweb_train_000001.bin"
    cache = tmp_path / "hub"
    populate_cache(cache, fake_repo(tmp_path, corrupt=bad))
    out = tmp_path / "data"
    with pytest.raises(FinewebError) as info:
        run_local(out, cache, train_shards=3)
    msg = str(info.value)
    assert "fineweb_train_000001.bin" in msg and "bad magic" in msg and "\n" not in msg
    assert not (out / "datasets/fineweb10B_sp1024/fineweb_train_000001.bin").exists()
    assert not [p for p in out.rglob("*") if p.name.endswith(".part")]


def test_unknown_variant_lists_available(tmp_path, cached):
    _, cache = cached
    with pytest.raises(FinewebError) as info:
        run_local(tmp_path / "data", cache, variant="sp8192")
    msg = str(info.value)
    assert "sp8192" in msg and "available variants: sp1024, sp4096" in msg


def test_progress_bar_only_when_asked(tmp_path, cached, capfd):
    _, cache = cached
    run_local(tmp_path / "a", cache, train_shards=1, progress=False)
    assert capfd.readouterr().err == ""
    run_local(tmp_path / "b", cache, train_shards=1, progress=True)
    err = capfd.readouterr().err
    assert "fineweb sp1024" in err and "file" in err


# ---------------------------------------------------------------- no network


def test_no_network_empty_cache_is_one_quick_line(tmp_path, no_hf_offline):
    start = time.monotonic()
    with pytest.raises(FinewebError) as info:
        download_fineweb(tmp_path / "data", cache_dir=tmp_path / "empty", endpoint=closed_port_url(),
                         timeout=2, progress=False)
    elapsed = time.monotonic() - start
    msg = str(info.value)
    assert elapsed < 10, elapsed
    assert "\n" not in msg
    assert msg.startswith("cannot reach the Hugging Face Hub to fetch willdepueoai/parameter-golf (offline?): ")
    assert "pgolf data prepare" in msg and "HF_HUB_OFFLINE=1" in msg and "datasets/manifest.json" in msg
    assert not (tmp_path / "data").exists()


def test_no_network_falls_back_to_a_populated_cache(tmp_path, cached):
    files, cache = cached
    summary = download_fineweb(tmp_path / "data", cache_dir=cache, endpoint=closed_port_url(), timeout=2,
                               train_shards=2, progress=False)
    assert summary["offline"] is True and "Connect" in summary["offline_reason"]
    assert summary["files_fetched"] == 1 + N_VAL + 2 + 2

    # asking for more than the cache holds: the missing file ends the run with the one-line error
    cache_snapshot = cache / f"datasets--{DEFAULT_REPO.replace('/', '--')}" / "snapshots" / COMMIT
    (cache_snapshot / DATA / "fineweb_train_000003.bin").unlink()
    with pytest.raises(FinewebError) as info:
        download_fineweb(tmp_path / "data", cache_dir=cache, endpoint=closed_port_url(), timeout=2,
                         train_shards=4, progress=False)
    assert "fineweb_train_000003.bin" in str(info.value) and "(offline?)" in str(info.value)


def test_everything_present_needs_neither_network_nor_cache(tmp_path, cached):
    files, cache = cached
    out = tmp_path / "data"
    first = run_local(out, cache, train_shards=2)
    summary = download_fineweb(out, cache_dir=tmp_path / "empty", endpoint=closed_port_url(), timeout=2,
                               train_shards=2, progress=False)  # manifest taken from out/manifest.json
    assert summary["files_fetched"] == 0 and summary["files_skipped"] == first["files_fetched"]
    assert summary["offline"] is True


def test_manifest_paths_cannot_escape_out_dir(tmp_path, no_hf_offline):
    cache = tmp_path / "hub"
    populate_cache(cache, fake_repo(tmp_path, model_path="../../escape.model"))
    with pytest.raises(FinewebError, match="unsafe tokenizer model_path"):
        run_local(tmp_path / "data", cache)
    assert not (tmp_path / "escape.model").exists()


def test_offline_mode_empty_cache(tmp_path, no_hf_offline):
    no_hf_offline.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FinewebError) as info:
        download_fineweb(tmp_path / "data", cache_dir=tmp_path / "empty", progress=False)
    msg = str(info.value)
    assert "\n" not in msg and "not in the local Hugging Face cache" in msg and "HF_HUB_OFFLINE" in msg


# ---------------------------------------------------------------- online, against a local fake Hub


class _FakeHub(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    repo_id = DEFAULT_REPO
    requests: list[str] = []

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _resolve(self):
        path = unquote(self.path.split("?", 1)[0])
        self.requests.append(f"{self.command} {path}")
        prefix = f"/datasets/{self.repo_id}/resolve/"
        if not path.startswith(prefix):
            return 404, {"X-Error-Code": "RepoNotFound"}, b""
        rev, _, name = path[len(prefix):].partition("/")
        if rev not in ("main", COMMIT):
            return 404, {"X-Error-Code": "RevisionNotFound"}, b""
        if name not in self.files:
            return 404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT}, b""
        data = self.files[name]
        return 200, {"X-Repo-Commit": COMMIT, "ETag": f'"{sha(data)}"'}, data

    def _reply(self, body: bool):
        status, headers, data = self._resolve()
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_HEAD(self):
        self._reply(body=False)

    def do_GET(self):
        self._reply(body=True)


@pytest.fixture
def fake_hub(no_hf_offline):
    handler = type("Handler", (_FakeHub,), {"files": {}, "requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield handler, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_online_download_pins_the_commit_and_links_out_of_the_cache(tmp_path, fake_hub):
    handler, url = fake_hub
    handler.files = fake_repo(tmp_path)
    out, cache = tmp_path / "data", tmp_path / "hub"
    summary = download_fineweb(out, cache_dir=cache, endpoint=url, train_shards=2, progress=False)
    assert summary["offline"] is False and summary["offline_reason"] is None
    assert summary["revision"] == COMMIT and summary["files_fetched"] == 1 + N_VAL + 2 + 2
    wanted = expected_remotes(handler.files, 2)
    for remote in wanted:
        assert sha(local_of(out, remote).read_bytes()) == sha(handler.files[remote]), remote
    assert on_disk(out) == sorted(remote.removeprefix("datasets/") for remote in wanted)
    # everything after the manifest was asked for at the pinned commit, never at "main"
    shard_gets = [r for r in handler.requests if r.endswith(".bin")]
    assert shard_gets and all(f"/resolve/{COMMIT}/" in r for r in shard_gets)
    # hard-linked out of the blob store (same filesystem here)
    shard = out / "datasets/fineweb10B_sp1024/fineweb_val_000000.bin"
    blob = cache / f"datasets--{DEFAULT_REPO.replace('/', '--')}" / "blobs" / sha(handler.files[f"{DATA}/fineweb_val_000000.bin"])
    assert shard.stat().st_ino == blob.stat().st_ino

    # rerun: no shard is requested again
    handler.requests.clear()
    again = download_fineweb(out, cache_dir=cache, endpoint=url, train_shards=2, progress=False)
    assert again["files_fetched"] == 0
    assert not [r for r in handler.requests if r.endswith(".bin")]


def test_online_file_missing_from_repo(tmp_path, fake_hub):
    handler, url = fake_hub
    handler.files = fake_repo(tmp_path, files_val=3)  # the manifest promises a third val shard
    with pytest.raises(FinewebError) as info:
        download_fineweb(tmp_path / "data", cache_dir=tmp_path / "hub", endpoint=url, train_shards=0,
                         progress=False)
    msg = str(info.value)
    assert "fineweb_val_000002.bin" in msg and "missing from dataset repo" in msg and "\n" not in msg


def test_online_unknown_repo(tmp_path, fake_hub):
    handler, url = fake_hub
    handler.files = fake_repo(tmp_path)
    with pytest.raises(FinewebError) as info:
        download_fineweb(tmp_path / "data", cache_dir=tmp_path / "hub", endpoint=url, repo_id="someone/nothing",
                         progress=False)
    assert "someone/nothing not found" in str(info.value)


def test_online_corrupt_download(tmp_path, fake_hub):
    handler, url = fake_hub
    handler.files = fake_repo(tmp_path, corrupt=f"{DATA}/fineweb_val_000001.bin")
    with pytest.raises(FinewebError) as info:
        download_fineweb(tmp_path / "data", cache_dir=tmp_path / "hub", endpoint=url, train_shards=1,
                         progress=False)
    assert "fineweb_val_000001.bin" in str(info.value) and "bad magic" in str(info.value)


# ---------------------------------------------------------------- env helper


def test_defaults_from_env():
    assert defaults_from_env({}) == {"repo_id": DEFAULT_REPO, "remote_root": "datasets"}
    assert defaults_from_env({"MATCHED_FINEWEB_REPO_ID": "kevclark/parameter-golf",
                              "MATCHED_FINEWEB_REMOTE_ROOT_PREFIX": "datasets/"}) == {
        "repo_id": "kevclark/parameter-golf", "remote_root": "datasets"}
    # an empty prefix means "files at the repo root"; an empty repo id means the default
    assert defaults_from_env({"MATCHED_FINEWEB_REPO_ID": "", "MATCHED_FINEWEB_REMOTE_ROOT_PREFIX": ""}) == {
        "repo_id": DEFAULT_REPO, "remote_root": ""}
