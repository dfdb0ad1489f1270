"""`pgolf data verify`: prove a dataset is intact and that its byte accounting is exact.

Checks every shard (header, size, token range, sha256 against the manifest when one lists it) and,
for the validation stream (all val shards in order, as the challenge loads it), reports:

- val_tokens, val_targets (= val_tokens - 1: every token after the first is a target);
- val_target_bytes: the challenge's lookup-table rule summed over all targets;
- val_text_bytes: UTF-8 bytes of each decoded (hence normalized) validation document, summed.

The two byte counts must agree; documents where they differ are listed, never hidden. A manifest
may be pgolf's own `manifest.json`, or a `reference.json` written by the challenge's exporter (whose expected
val_tokens / val_targets / val_target_bytes are then checked too).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pgolf.data.shards import SPLITS, ShardError, check_token_range, open_shard, read_header, sha256_file
from pgolf.data.tokenizer import ByteLUTs, build_byte_luts, load_tokenizer, target_bytes
from pgolf.errors import PgolfError
from pgolf.telemetry import Progress

MANIFEST_NAMES = ("manifest.json", "reference.json")


class VerifyError(PgolfError, ValueError):
    pass


@dataclass
class Layout:
    dataset_dir: Path
    root: Path | None
    manifest_path: Path | None
    manifest: dict | None
    tokenizer_path: Path | None


def _has_shards(d: Path) -> bool:
    return d.is_dir() and any(d.glob("fineweb_*.bin"))


def find_layout(data: str | Path, tokenizer: str | Path | None = None) -> Layout:
    """Accept either a dataset directory (holding the shards) or a root with datasets/<name>/."""
    data = Path(data)
    if not data.exists():
        raise VerifyError(f"{data}: not found")
    if _has_shards(data):
        ds = data
        root = data.parent.parent if data.parent.name == "datasets" else None
    else:
        cands = sorted(d for d in (data / "datasets").glob("*") if _has_shards(d)) if (data / "datasets").is_dir() else []
        if not cands:
            raise VerifyError(f"{data}: no fineweb_*.bin shards here or under {data / 'datasets'}")
        if len(cands) > 1:
            names = ", ".join(c.name for c in cands)
            raise VerifyError(f"{data}: several datasets ({names}); pass --data {data}/datasets/<name>")
        ds, root = cands[0], data
    manifest_path = manifest = None
    if root is not None:
        for name in MANIFEST_NAMES:
            if (root / name).is_file():
                manifest_path = root / name
                try:
                    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
                except json.JSONDecodeError as exc:
                    raise VerifyError(f"{manifest_path}: not valid JSON ({exc.msg})") from None
                except (UnicodeDecodeError, OSError) as exc:
                    raise VerifyError(f"{manifest_path}: unreadable ({type(exc).__name__})") from None
                if not isinstance(manifest, dict):
                    raise VerifyError(f"{manifest_path}: expected a JSON object")
                break
    tok = Path(tokenizer) if tokenizer else None
    if tok is None and manifest and isinstance(manifest.get("tokenizer_path"), str) and root is not None:
        tok = root / manifest["tokenizer_path"]
    if tok is None and root is not None and (root / "tokenizers").is_dir():
        models = sorted((root / "tokenizers").glob("*.model"))
        if len(models) == 1:
            tok = models[0]
    return Layout(ds, root, manifest_path, manifest, tok)


def _manifest_shas(manifest: dict | None) -> dict[str, str]:
    """{shard file name: sha256} from either manifest flavour."""
    if not manifest or not isinstance(manifest.get("shards"), dict):
        return {}
    out = {}
    for name, v in manifest["shards"].items():
        sha = v.get("sha256") if isinstance(v, dict) else v
        if isinstance(sha, str):
            out[name] = sha
    return out


@dataclass
class VerifyReport:
    dataset_dir: str
    tokenizer: str
    vocab_size: int
    shards: list[dict] = field(default_factory=list)
    val: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict:
        return {"ok": self.ok, "dataset_dir": self.dataset_dir, "tokenizer": self.tokenizer,
                "vocab_size": self.vocab_size, "shards": self.shards, **self.val, "problems": self.problems}


def doc_byte_counts(sp, luts: ByteLUTs, stream: np.ndarray, threads: int = 1,
                    progress: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per validation document: (start index, LUT bytes of its targets, UTF-8 bytes of its decoded text).

    Documents are the segments starting at each BOS (plus a leading segment if the stream does not
    start with BOS). Index 0 is not a target, so it contributes no bytes on either side.
    """
    bos = int(sp.bos_id())
    n = len(stream)
    tb = np.zeros(n, dtype=np.int64)
    chunk = 1 << 22
    for s in range(1, n, chunk):
        e = min(s + chunk, n)
        tb[s:e] = target_bytes(luts, stream[s - 1:e - 1], stream[s:e])
    starts = np.flatnonzero(stream == bos)
    if len(starts) == 0 or starts[0] != 0:
        starts = np.concatenate([[0], starts])
    lut_bytes = np.add.reduceat(tb, starts) if n else np.zeros(0, dtype=np.int64)
    ends = np.append(starts[1:], n)
    text_bytes = np.zeros(len(starts), dtype=np.int64)
    batch = 512
    with Progress("verify: decoding val docs", total=len(starts), unit="docs", enabled=progress) as bar:
        for b in range(0, len(starts), batch):
            segs = []
            for s, e in zip(starts[b:b + batch], ends[b:b + batch]):
                lo = s + 1 if (stream[s] == bos or s == 0) else s  # index 0 is never a target
                segs.append(stream[lo:e].astype(np.int64).tolist())
            texts = sp.decode(segs, num_threads=threads) if threads > 1 else sp.decode(segs)
            text_bytes[b:b + len(segs)] = [len(t.encode("utf-8")) for t in texts]
            bar.update(len(segs))
    return starts, lut_bytes, text_bytes


def verify(data: str | Path, tokenizer: str | Path | None = None, *, vocab_size: int | None = None,
           check_sha: bool = True, progress: bool = True, threads: int = 1, max_listed: int = 10) -> VerifyReport:
    layout = find_layout(data, tokenizer)
    if layout.tokenizer_path is None:
        raise VerifyError(f"{data}: no tokenizer found; pass --tokenizer MODEL")
    sp = load_tokenizer(layout.tokenizer_path)
    v = int(vocab_size or sp.vocab_size())
    rep = VerifyReport(str(layout.dataset_dir), str(layout.tokenizer_path), v)
    if layout.manifest_path is not None:
        rep.val["manifest"] = str(layout.manifest_path)
    shas = _manifest_shas(layout.manifest)
    present = set()
    files = sorted(layout.dataset_dir.glob("fineweb_*.bin"))
    for path in files:
        present.add(path.name)
        entry = {"file": path.name, "split": path.name.split("_")[1]}
        try:
            entry["tokens"] = read_header(path)
            check_token_range(open_shard(path), v, path)
        except ShardError as exc:
            entry["status"] = "CORRUPT"
            rep.problems.append(str(exc))
            rep.shards.append(entry)
            continue
        entry["status"] = "ok"
        if check_sha:
            entry["sha256"] = sha256_file(path)
            if path.name in shas:
                entry["sha256_match"] = entry["sha256"] == shas[path.name]
                if not entry["sha256_match"]:
                    entry["status"] = "SHA256 MISMATCH"
                    rep.problems.append(f"{path}: sha256 {entry['sha256'][:16]}... differs from the manifest's "
                                        f"{shas[path.name][:16]}...")
            elif shas:
                entry["sha256_match"] = None
                rep.problems.append(f"{path}: not listed in {layout.manifest_path}")
        rep.shards.append(entry)
    for name in sorted(set(shas) - present):
        rep.problems.append(f"{layout.dataset_dir / name}: listed in {layout.manifest_path} but missing")
    for split in SPLITS:
        if not any(s["split"] == split for s in rep.shards):
            rep.problems.append(f"{layout.dataset_dir}: no {split} shards")
    if any(s["status"] == "CORRUPT" for s in rep.shards if s["split"] == "val") or not any(
            s["split"] == "val" for s in rep.shards):
        return rep

    # The validation stream, as the challenge loads it: every val shard, sorted, concatenated.
    val_files = [layout.dataset_dir / s["file"] for s in rep.shards if s["split"] == "val"]
    parts = [np.asarray(open_shard(p)) for p in val_files]
    stream = np.concatenate(parts)
    if len(stream) < 2:  # valid shards, but not one target to score
        where = val_files[0] if len(val_files) == 1 else layout.dataset_dir
        rep.problems.append(f"{where}: the validation stream has {len(stream)} token(s) in {len(parts)} shard(s); "
                            f"at least 2 are needed (n tokens hold n - 1 targets)")
        return rep
    luts = build_byte_luts(sp, v)
    starts, lut_b, text_b = doc_byte_counts(sp, luts, stream, threads=threads, progress=progress)
    val = {
        "val_tokens": int(len(stream)),
        "val_targets": int(max(len(stream) - 1, 0)),
        "val_docs": int(np.count_nonzero(stream == sp.bos_id())),
        "val_target_bytes": int(lut_b.sum()),
        "val_text_bytes": int(text_b.sum()),
    }
    val["bytes_agree"] = val["val_target_bytes"] == val["val_text_bytes"]
    bad = np.flatnonzero(lut_b != text_b)
    val["mismatched_docs"] = int(len(bad))
    if len(bad):
        listed = [{"doc": int(i), "stream_index": int(starts[i]), "lut_bytes": int(lut_b[i]),
                   "text_bytes": int(text_b[i])} for i in bad[:max_listed]]
        val["mismatch_examples"] = listed
        rep.problems.append(f"byte accounting: LUT total {val['val_target_bytes']} != decoded text "
                            f"{val['val_text_bytes']} ({len(bad)} documents differ, first at stream index "
                            f"{int(starts[bad[0]])})")
    m = layout.manifest or {}
    expected = {k: m[k] for k in ("val_tokens", "val_targets", "val_target_bytes") if isinstance(m.get(k), int)}
    if isinstance(m.get("stats"), dict) and isinstance(m["stats"].get("tokens_val"), int):
        expected.setdefault("val_tokens", m["stats"]["tokens_val"])
    if isinstance(m.get("val_normalized_text_bytes"), int):
        expected["val_text_bytes"] = m["val_normalized_text_bytes"]
    for k, want in expected.items():
        if val[k] != want:
            rep.problems.append(f"{k} = {val[k]} but {layout.manifest_path} says {want}")
    val["expected"] = expected
    rep.val.update(val)
    return rep


def format_report(rep: VerifyReport) -> str:
    lines = [f"dataset:   {rep.dataset_dir}", f"tokenizer: {rep.tokenizer} (vocab {rep.vocab_size})"]
    if "manifest" in rep.val:
        lines.append(f"manifest:  {rep.val['manifest']}")
    for s in rep.shards:
        sha = ""
        if "sha256" in s:
            match = {True: "matches manifest", False: "DIFFERS from manifest", None: "not in manifest"}.get(
                s.get("sha256_match"), "no manifest entry")
            sha = f" sha256 {s['sha256'][:16]}... {match}"
        lines.append(f"  {s['file']}: {s['status']} tokens={s.get('tokens', '?')}{sha}")
    v = rep.val
    if "val_tokens" in v:
        exp = v.get("expected", {})

        def line(k: str) -> str:
            tag = ""
            if k in exp:
                tag = "  (expected, OK)" if exp[k] == v[k] else f"  (EXPECTED {exp[k]})"
            return f"{k}: {v[k]}{tag}"

        lines += [line("val_tokens"), line("val_targets"), f"val_docs: {v['val_docs']}",
                  line("val_target_bytes"), line("val_text_bytes"),
                  f"byte accounting: {'AGREE' if v['bytes_agree'] else 'MISMATCH'}"
                  + ("" if v["bytes_agree"] else f" ({v['mismatched_docs']} documents differ)")]
        for ex in v.get("mismatch_examples", []):
            lines.append(f"  doc {ex['doc']} at stream index {ex['stream_index']}: LUT {ex['lut_bytes']} bytes, "
                         f"decoded text {ex['text_bytes']} bytes")
    lines.append("verify: PASS" if rep.ok else f"verify: FAIL ({len(rep.problems)} problem(s))")
    lines += [f"  - {p}" for p in rep.problems]
    return "\n".join(lines)
