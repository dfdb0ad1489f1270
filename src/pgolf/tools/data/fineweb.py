"""Fetch the challenge's published FineWeb shards and tokenizer from the Hugging Face Hub.

Remote layout (a *dataset* repo, default `willdepueoai/parameter-golf`, remote root `datasets/`):
`<root>/manifest.json`, `<root>/datasets/fineweb10B_<variant>/fineweb_{val,train}_NNNNNN.bin` and
`<root>/tokenizers/<files named by the manifest>`; locally the same tree with `<root>/` stripped,
under `out_dir`.

The manifest is read first; it names the dataset (`datasets[].name`, `stats.files_val`,
`stats.files_train`, `tokenizer_name`) and the tokenizer files (`tokenizers[].model_path`,
`vocab_path`, `path`, relative to the remote root). Every val shard, the first
`min(train_shards, files_train)` train shards and the tokenizer files are fetched with
`huggingface_hub.hf_hub_download` into the Hub cache, then hard-linked (or copied) into `out_dir`
under a temporary name, checked, and renamed: `out_dir` never holds a partial or unchecked file.
Shards are checked with `shards.read_header` (magic, version, exact size). Files already present
in `out_dir` (shards: with a valid header and size) are skipped, so an interrupted run resumes. All
files after the manifest are pinned to the manifest's commit (one run never mixes two versions).

Network behaviour: unless offline (`HF_HUB_OFFLINE=1` or `local_files_only=True`), one quick metadata
request for the manifest checks that the Hub answers; if it does not, the run goes on from the Hub cache
only, and the first missing file ends it with one `FinewebError` line (not ~25 s of retries).

No environment variables are read here; `defaults_from_env` maps `MATCHED_FINEWEB_*` for the CLI.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import huggingface_hub
from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from tqdm import tqdm

from pgolf.data.shards import ShardError, read_header
from pgolf.errors import PgolfError

DEFAULT_REPO = "willdepueoai/parameter-golf"
DEFAULT_REMOTE_ROOT = "datasets"
ENV_REPO_ID = "MATCHED_FINEWEB_REPO_ID"
ENV_REMOTE_ROOT = "MATCHED_FINEWEB_REMOTE_ROOT_PREFIX"
DATASET_PREFIX = "fineweb10B_"
MANIFEST = "manifest.json"

_RETRYABLE_STATUS = (408, 429, 500, 502, 503, 504)
_COMMIT_RE = re.compile(r"[0-9a-f]{40}")


def _network_errors() -> tuple[type[BaseException], ...]:
    """Transport-level exception classes of whichever HTTP stack this huggingface_hub uses."""
    errors: list[type[BaseException]] = [OfflineModeIsEnabled, ConnectionError, TimeoutError]
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError"),
                         ("requests", "ConnectionError"), ("requests", "Timeout")):
        try:
            errors.append(getattr(__import__(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


_NETWORK_ERRORS = _network_errors()


class FinewebError(PgolfError, RuntimeError):
    """A download that cannot complete; `str()` is always a single line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split("\n")).strip())


class _QuietTqdm(tqdm):
    """Per-file byte bars of huggingface_hub, always off: we draw one bar over files instead."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs["disable"] = True
        kwargs.pop("name", None)
        super().__init__(*args, **kwargs)


def _hf_offline_mode() -> bool:
    """huggingface_hub's own offline switch (HF_HUB_OFFLINE, read by huggingface_hub, not here)."""
    check = getattr(huggingface_hub.constants, "is_offline_mode", None)
    return bool(check()) if callable(check) else bool(getattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False))


def defaults_from_env(env: Mapping[str, str]) -> dict[str, str]:
    """`repo_id` / `remote_root` keyword arguments from the challenge's env names.

    `MATCHED_FINEWEB_REPO_ID` (empty = default repo) and `MATCHED_FINEWEB_REMOTE_ROOT_PREFIX`
    (set-but-empty is meaningful: files at the repo root, as some community mirrors publish them).
    """
    repo_id = (env.get(ENV_REPO_ID) or "").strip() or DEFAULT_REPO
    root = env.get(ENV_REMOTE_ROOT)
    remote_root = DEFAULT_REMOTE_ROOT if root is None else root.strip().strip("/")
    return {"repo_id": repo_id, "remote_root": remote_root}


def dataset_name(variant: str) -> str:
    """`sp1024` -> `fineweb10B_sp1024` (a full name is accepted as is)."""
    return variant if variant.startswith(DATASET_PREFIX) else DATASET_PREFIX + variant


def _short(exc: BaseException, limit: int = 160) -> str:
    """The innermost cause of an exception chain, as `Type: first line`, truncated."""
    seen: set[int] = set()
    inner = exc
    while id(inner) not in seen:
        seen.add(id(inner))
        nxt = inner.__cause__ or inner.__context__
        if nxt is None:
            break
        inner = nxt
    lines = str(inner).strip().splitlines()
    text = lines[0].strip() if lines else ""
    text = f"{type(inner).__name__}: {text}" if text else type(inner).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _safe_relpath(value: Any, what: str) -> PurePosixPath:
    """A manifest-supplied path must stay inside the output tree."""
    if not isinstance(value, str) or not value.strip():
        raise FinewebError(f"manifest: {what} is not a path: {value!r}")
    rel = PurePosixPath(value.strip().replace("\\", "/"))
    if rel.is_absolute() or any(part in ("..", "") for part in rel.parts) or not rel.parts:
        raise FinewebError(f"manifest: unsafe {what} {value!r} (must be relative, without '..')")
    return rel


@dataclass(frozen=True)
class _Item:
    rel: PurePosixPath  # path under the remote root == path under out_dir
    shard: bool


class _Fetcher:
    """One download session: repo coordinates, offline state and error translation."""

    def __init__(self, *, repo_id: str, remote_root: str, revision: str | None, cache_dir: str | os.PathLike | None,
                 local_only: bool, endpoint: str | None, token: str | bool | None, timeout: float):
        self.repo_id = repo_id
        self.remote_root = remote_root.strip().strip("/")
        self.revision = revision
        self.cache_dir = cache_dir
        self.endpoint = endpoint.rstrip("/") if endpoint else None
        self.token = token
        self.timeout = timeout
        self.offline_mode = local_only  # the caller asked for cache-only (or HF offline mode is on)
        self.unreachable: str | None = None  # why the Hub did not answer, when it did not

    @property
    def local_only(self) -> bool:
        return self.offline_mode or self.unreachable is not None

    def remote(self, rel: PurePosixPath | str) -> str:
        rel = str(rel)
        return f"{self.remote_root}/{rel}" if self.remote_root else rel

    def probe(self, rel: str) -> None:
        """One HEAD without retries; on a transport failure switch to cache-only and remember why."""
        url = hf_hub_url(self.repo_id, self.remote(rel), repo_type="dataset", revision=self.revision,
                         endpoint=self.endpoint)
        try:
            get_hf_file_metadata(url, token=self.token, timeout=self.timeout, endpoint=self.endpoint)
        except _NETWORK_ERRORS as exc:
            self.unreachable = _short(exc)
        except HfHubHTTPError as exc:
            status = getattr(getattr(exc, "response", None), "status_code", None)
            if status in _RETRYABLE_STATUS:
                self.unreachable = f"HTTP {status} from the Hub"
            else:
                raise self.error(exc, self.remote(rel)) from exc

    def fetch(self, rel: PurePosixPath | str, revision: str | None) -> Path:
        remote = self.remote(rel)
        try:
            path = hf_hub_download(self.repo_id, remote, repo_type="dataset", revision=revision,
                                   cache_dir=self.cache_dir, local_files_only=self.local_only,
                                   endpoint=self.endpoint, token=self.token, etag_timeout=self.timeout,
                                   tqdm_class=_QuietTqdm)
        except FinewebError:
            raise
        except Exception as exc:
            mapped = self.error(exc, remote, revision)
            if mapped is None:
                raise
            raise mapped from exc
        return Path(path)

    def unreachable_error(self, remote: str, reason: str) -> FinewebError:
        return FinewebError(
            f"cannot reach the Hugging Face Hub to fetch {self.repo_id} (offline?): {reason}; {remote} is not in "
            f"the local Hugging Face cache; use `pgolf data prepare` for local data or set HF_HUB_OFFLINE=1 with a "
            f"populated cache")

    def error(self, exc: BaseException, remote: str, revision: str | None = None) -> FinewebError | None:
        """Translate a huggingface_hub / transport exception into one line; None for anything else."""
        rev = revision or self.revision or "main"
        if isinstance(exc, GatedRepoError):
            return FinewebError(f"dataset repo {self.repo_id} is gated: accept its terms on the Hub and log in "
                                f"(`hf auth login`) or pass a token")
        if isinstance(exc, RepositoryNotFoundError):
            return FinewebError(f"dataset repo {self.repo_id} not found on the Hub (check {ENV_REPO_ID}; a private "
                                f"repo needs a token)")
        if isinstance(exc, RevisionNotFoundError):
            return FinewebError(f"revision {rev!r} not found in dataset repo {self.repo_id}")
        if isinstance(exc, RemoteEntryNotFoundError):
            return FinewebError(f"{remote} is missing from dataset repo {self.repo_id} at revision {rev!r} "
                                f"(check {ENV_REMOTE_ROOT}={self.remote_root!r} and the manifest)")
        if isinstance(exc, LocalEntryNotFoundError) or isinstance(exc, _NETWORK_ERRORS):
            if self.offline_mode and self.unreachable is None:
                return FinewebError(
                    f"{remote} of {self.repo_id} is not in the local Hugging Face cache and Hub access is off "
                    f"(HF_HUB_OFFLINE=1 or local_files_only); unset HF_HUB_OFFLINE to download it, or use "
                    f"`pgolf data prepare` for local data")
            return self.unreachable_error(remote, self.unreachable or _short(exc))
        if isinstance(exc, HfHubHTTPError):
            return FinewebError(f"Hugging Face Hub error fetching {remote} from {self.repo_id}: {_short(exc)}")
        return None


def _snapshot_commit(path: Path) -> str | None:
    """The commit hash in a Hub cache path `.../snapshots/<commit>/...`, if that is what this is."""
    parts = path.parts
    for i, part in enumerate(parts[:-1]):
        if part == "snapshots" and _COMMIT_RE.fullmatch(parts[i + 1]):
            return parts[i + 1]
    return None


def _check_shard(path: Path, remote: str, repo_id: str, cached: Path | None = None) -> None:
    try:
        read_header(path)
    except ShardError as exc:
        where = f"; the cached copy {cached} is bad: delete it and retry" if cached is not None else ""
        raise FinewebError(f"corrupt shard {remote} from {repo_id}: {exc.problem}{where}") from None


def _local_ok(dst: Path, shard: bool) -> bool:
    if shard:
        try:
            read_header(dst)
        except ShardError:
            return False
        return True
    return dst.is_file() and dst.stat().st_size > 0


def _place(src: Path, dst: Path, *, link: bool, check: Any = None) -> int:
    """Hard-link (or copy) `src` to a temp name beside `dst`, run `check(tmp)`, rename; return bytes."""
    real = src.resolve()
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        linked = False
        if link:
            try:
                os.link(real, tmp)
                linked = True
            except OSError:  # other filesystem, no permission, no hard links: copy instead
                linked = False
        if not linked:
            with open(real, "rb") as fin, open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 22)
                fout.flush()
                os.fsync(fout.fileno())
        if check is not None:
            check(tmp)
        size = tmp.stat().st_size
        os.replace(tmp, dst)
        return size
    finally:
        tmp.unlink(missing_ok=True)


def _load_manifest(path: Path, label: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FinewebError(f"cannot read manifest {label}: {_short(exc)}") from None
    if not isinstance(data, dict) or not isinstance(data.get("datasets"), list):
        raise FinewebError(f"manifest {label} has no 'datasets' list")
    return data


def _stat(entry: dict, key: str, label: str) -> int:
    stats = entry.get("stats") or {}
    try:
        value = int(stats[key])
    except (KeyError, TypeError, ValueError):
        raise FinewebError(f"manifest {label}: dataset {entry.get('name')!r} has no integer stats.{key}") from None
    if value < 0:
        raise FinewebError(f"manifest {label}: dataset {entry.get('name')!r} has negative stats.{key}")
    return value


def download_fineweb(out_dir: str | os.PathLike, *, variant: str = "sp1024", train_shards: int = 80,
                     repo_id: str = DEFAULT_REPO, remote_root: str = DEFAULT_REMOTE_ROOT, revision: str | None = None,
                     progress: bool = True, max_workers: int = 4, cache_dir: str | os.PathLike | None = None,
                     local_files_only: bool = False, endpoint: str | None = None, token: str | bool | None = None,
                     timeout: float = 10.0, link: bool = True) -> dict[str, Any]:
    """Fetch manifest, all val shards, the first `train_shards` train shards and the tokenizer into `out_dir`.

    `cache_dir`, `endpoint`, `token`: passed to huggingface_hub (None = its defaults: HF_HUB_CACHE,
    HF_ENDPOINT, the stored token). `local_files_only`: never touch the network, use the Hub cache only
    (also implied by huggingface_hub's offline mode). `timeout`: seconds for the reachability check and
    each metadata request. `link`: hard-link files out of the Hub cache when the filesystem allows
    (they share storage with the cache; pass False to always copy).

    Returns a summary: variant, dataset, repo_id, revision (the commit used, when known), out_dir,
    dataset_dir, manifest_path, tokenizer_path, tokenizer_files, val_shards, train_shards,
    train_shards_available, files_fetched, files_skipped, bytes_downloaded (bytes written into
    `out_dir` this run, whether they came over the network or from the Hub cache), offline, offline_reason.
    """
    if isinstance(train_shards, bool) or not isinstance(train_shards, int) or train_shards < 0:
        raise ValueError(f"train_shards must be a non-negative integer, got {train_shards!r}")
    if max_workers < 1:
        raise ValueError(f"max_workers must be >= 1, got {max_workers!r}")
    name = dataset_name(variant)
    _safe_relpath(name, "dataset name")
    out = Path(out_dir)

    hub = _Fetcher(repo_id=repo_id, remote_root=remote_root, revision=revision, cache_dir=cache_dir,
                   local_only=bool(local_files_only) or _hf_offline_mode(),
                   endpoint=endpoint, token=token, timeout=timeout)
    if not hub.local_only:
        hub.probe(MANIFEST)

    # 1. the manifest (from the Hub, else the Hub cache, else -- when the Hub is out of reach -- a previous run's copy)
    manifest_dst = out / MANIFEST
    manifest_label = f"{repo_id}:{hub.remote(MANIFEST)}"
    try:
        manifest_src: Path | None = hub.fetch(MANIFEST, revision)
    except FinewebError:
        if not (hub.local_only and manifest_dst.is_file()):
            raise
        manifest_src = None
    pinned = (_snapshot_commit(manifest_src) if manifest_src is not None else None) or revision
    manifest = _load_manifest(manifest_src or manifest_dst, manifest_label)

    entries = [e for e in manifest["datasets"] if isinstance(e, dict)]
    entry = next((e for e in entries if e.get("name") == name), None)
    if entry is None:
        names = sorted(str(e.get("name")) for e in entries if e.get("name"))
        available = ", ".join(n.removeprefix(DATASET_PREFIX) for n in names) or "none"
        raise FinewebError(f"variant {variant!r} (dataset {name}) is not in {manifest_label}; available variants: "
                           f"{available}")
    files_val = _stat(entry, "files_val", manifest_label)
    files_train = _stat(entry, "files_train", manifest_label)
    if files_val < 1:
        raise FinewebError(f"manifest {manifest_label}: dataset {name} lists no validation shards")
    n_train = min(train_shards, files_train)

    tok_name = entry.get("tokenizer_name")
    tok_entry = next((t for t in manifest.get("tokenizers") or []
                      if isinstance(t, dict) and t.get("name") == tok_name), None)
    if tok_entry is None:
        raise FinewebError(f"manifest {manifest_label}: tokenizer {tok_name!r} of dataset {name} is not listed")
    tok_files: list[PurePosixPath] = []
    for key in ("model_path", "vocab_path", "path"):
        if tok_entry.get(key):
            rel = _safe_relpath(tok_entry[key], f"tokenizer {key}")
            if rel not in tok_files:
                tok_files.append(rel)
    if not tok_files:
        raise FinewebError(f"manifest {manifest_label}: tokenizer {tok_name!r} names no files "
                           f"(model_path / vocab_path / path)")

    data_rel = PurePosixPath("datasets") / name
    items = ([_Item(data_rel / f"fineweb_val_{i:06d}.bin", True) for i in range(files_val)]
             + [_Item(data_rel / f"fineweb_train_{i:06d}.bin", True) for i in range(n_train)]
             + [_Item(rel, False) for rel in tok_files])

    fetched = skipped = written = 0
    if manifest_src is not None:
        if manifest_dst.is_file() and manifest_dst.read_bytes() == manifest_src.read_bytes():
            skipped += 1
        else:
            written += _place(manifest_src, manifest_dst, link=False)
            fetched += 1
    else:
        skipped += 1

    def one(item: _Item) -> int | None:
        dst = out / item.rel
        if _local_ok(dst, item.shard):
            return None
        src = hub.fetch(item.rel, pinned)
        remote = hub.remote(item.rel)
        check = (lambda tmp: _check_shard(tmp, remote, repo_id, src.resolve())) if item.shard else None
        return _place(src, dst, link=link, check=check)

    bar = tqdm(total=len(items), unit="file", desc=f"fineweb {name.removeprefix(DATASET_PREFIX)}") if progress else None
    try:
        with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="pgolf-fineweb") as pool:
            futures = [pool.submit(one, item) for item in items]
            try:
                for fut in as_completed(futures):
                    nbytes = fut.result()
                    if nbytes is None:
                        skipped += 1
                    else:
                        fetched += 1
                        written += nbytes
                    if bar is not None:
                        bar.set_postfix_str(f"{written / 1e6:.1f} MB new, {skipped} present", refresh=False)
                        bar.update(1)
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise
    finally:
        if bar is not None:
            bar.close()

    tok_main = tok_entry.get("model_path") or tok_entry.get("path") or str(tok_files[0])
    return {
        "variant": name.removeprefix(DATASET_PREFIX),
        "dataset": name,
        "repo_id": repo_id,
        "revision": pinned,
        "out_dir": str(out),
        "dataset_dir": str(out / data_rel),
        "manifest_path": str(manifest_dst),
        "tokenizer_path": str(out / _safe_relpath(tok_main, "tokenizer path")),
        "tokenizer_files": [str(out / rel) for rel in tok_files],
        "val_shards": files_val,
        "train_shards": n_train,
        "train_shards_available": files_train,
        "files_fetched": fetched,
        "files_skipped": skipped,
        "bytes_downloaded": written,
        "offline": hub.local_only,
        "offline_reason": hub.unreachable or ("offline mode" if hub.offline_mode else None),
    }
