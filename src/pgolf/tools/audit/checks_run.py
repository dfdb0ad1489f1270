"""The checks of the run's records: budgets, data, reference (docs/DESIGN.md#audit).

Sizes are read from disk, the data from its shards and manifest, the score settings from results.json
against config.json; none of them needs the model.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from pgolf.config import to_dict
from pgolf.data.shards import list_shards
from pgolf.quant.container import read_artifact
from pgolf.rundir import QUANT_SUMMARY, RESULTS
from pgolf.scoring.lora import lora_settings
from pgolf.scoring.modes import MODES
from pgolf.telemetry import describe_hardware, hardware_matches
from pgolf.tools.audit.context import FAIL, PASS, SKIP, AuditContext, CheckResult
from pgolf.tools.bundle import config_code_bytes
from pgolf.tools.data.verify import VerifyError, find_layout

CHALLENGE_BYTES_LIMIT = 16_000_000
SHA_TRAIN_MAX_BYTES = 2_000_000_000
"""Hash the training shards too when they total at most this many bytes (validation shards always)."""
VAL_READ_PURPOSES = ("periodic_eval",)
"""The only purposes for which training may open a validation shard (reads.json)."""
CALIBRATION_SOURCES = ("selfgen", "train", None)


# ------------------------------------------------------------------------------------------------ budgets


def _code_bytes(ctx: AuditContext) -> tuple[int, dict]:
    recorded = None
    for src in (ctx.quant, ctx.results):
        if src is not None and isinstance(src.code_bytes, int):
            recorded = src.code_bytes
            break
    ev: dict = {"recorded_code_bytes": recorded}
    if recorded:
        ev["code_bytes_source"] = "recorded by the run (the shipped train_gpt.py)"
        return recorded, ev
    bundle = None
    try:
        bundle = config_code_bytes(ctx.cfg)
    except Exception as exc:  # the bundle is optional evidence; say why it is missing
        ev["bundle_error"] = f"{type(exc).__name__}: {exc}"
    ev["bundle_code_bytes"] = bundle
    if bundle is not None:
        ev["code_bytes_source"] = "no code recorded: the bundle built now for this config"
        return bundle, ev
    ev["code_bytes_source"] = "no code recorded and no bundle: 0 (incomplete)"
    return 0, ev


def check_budgets(ctx: AuditContext) -> CheckResult:
    """Artifact file + code within the byte limit; training and scoring seconds within theirs (a verdict
    only when measured on budget.target_hardware)."""
    b = ctx.cfg.budget
    modes = ctx.results.modes
    fails, notes = [], []
    art = ctx.run.artifact.stat().st_size
    code, code_ev = _code_bytes(ctx)
    limit = min(b.artifact_bytes_limit, CHALLENGE_BYTES_LIMIT)
    total = art + code
    ev: dict = {"artifact_bytes_on_disk": art, "code_bytes": code, **code_ev, "total_bytes": total,
                "limit_bytes": limit, "config_limit_bytes": b.artifact_bytes_limit}
    for name, src in ((QUANT_SUMMARY, ctx.quant), (RESULTS, ctx.results)):
        if src is not None and isinstance(src.artifact_bytes, int) and src.artifact_bytes != art:
            fails.append(f"{name} says the artifact has {src.artifact_bytes:,} bytes, the file has {art:,}")
    if total > limit:
        fails.append(f"code {code:,} + artifact {art:,} = {total:,} bytes > {limit:,}")
    if b.artifact_bytes_limit > CHALLENGE_BYTES_LIMIT:
        notes.append(f"budget.artifact_bytes_limit {b.artifact_bytes_limit:,} is above the challenge's; "
                     f"checked against {CHALLENGE_BYTES_LIMIT:,}")

    where = describe_hardware(ctx.run_env)
    target = hardware_matches(b.target_hardware, ctx.run_env)
    ev.update(measured_on=where, target_hardware=b.target_hardware, on_target=target)
    tr = ctx.train
    train_s = tr.charged_seconds if tr is not None else None
    if train_s is None and ctx.timings:
        train_s = ctx.timings.get("train")
    timings = ctx.timings
    eval_s = timings.get("score")
    if eval_s is None:
        eval_s = sum(float(r.get("seconds", 0.0)) for r in modes.values())
    ev.update(train_seconds=train_s, train_seconds_limit=b.train_seconds_limit, eval_seconds=eval_s,
              eval_seconds_limit=b.eval_seconds_limit, phases=timings,
              eval_seconds_per_mode={m: r.get("seconds") for m, r in modes.items()})
    if train_s is None:
        fails.append("no training time recorded (train_summary.json / timings.json)")
    # A run stopped by the wallclock cap finishes the step in flight, as the challenge's own loop does:
    # up to one (average) step over the limit is the cap working, not a budget overrun.
    grace = (float(tr.step_avg_ms or 0.0) / 1000.0) if tr is not None and tr.stopped_by == "wallclock_cap" else 0.0
    ev["train_grace_seconds"] = grace
    times = []
    for what, secs, lim in (("train", train_s, b.train_seconds_limit), ("eval", eval_s, b.eval_seconds_limit)):
        if secs is None:
            continue
        times.append(f"{what} {secs:.1f}s/{lim:g}s")
        if what == "train" and lim < secs <= lim + grace:
            notes.append(f"train {secs:.3f}s: stopped by the wallclock cap within one step ({grace:.3f}s) of it")
        elif secs > lim:
            if target:
                fails.append(f"{what} time {secs:.1f}s > {lim:g}s on the target hardware ({where})")
            else:
                notes.append(f"{what} time {secs:.1f}s > {lim:g}s, but not measured on the target hardware")
    if ctx.cfg.score.max_val_tokens:
        notes.append("eval time of a validation prefix, not of the whole stream")
    hw = (f"measured on {where}" if target else
          f"measured on {where}, not the target hardware {b.target_hardware}: times are not a verdict")
    ev["notes"] = notes
    line = f"{total:,} bytes (code {code:,} + artifact {art:,}) <= {limit:,}; {', '.join(times)}; {hw}"
    if fails:
        return CheckResult("budgets", FAIL, ev, "; ".join(fails) + f" ({hw})")
    return CheckResult("budgets", PASS, ev, line + ("; " + "; ".join(notes) if notes else ""))


# ------------------------------------------------------------------------------------------------ data


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _digest(hashes: list[str]) -> str:
    return hashlib.sha256("".join(hashes).encode()).hexdigest()


def _check_reads(ctx: AuditContext, ev: dict, fails: list[str]) -> None:
    """reads.json: what training opened, and why (a validation shard only for periodic evaluation)."""
    val_files = {p.resolve() for p in list_shards(ctx.cfg.data.path, "val")}
    if ctx.reads is None:
        fails.append("no reads.json: the run did not record which shards it opened")
        return
    bad = []
    for r in ctx.reads:
        f = Path(str(r.get("file", "")))
        is_val = f.resolve() in val_files or f.name.startswith("fineweb_val_")
        if is_val and r.get("purpose") not in VAL_READ_PURPOSES:
            bad.append(f"{f.name} ({r.get('purpose')})")
    purposes: dict[str, int] = {}
    for r in ctx.reads:
        purposes[str(r.get("purpose"))] = purposes.get(str(r.get("purpose")), 0) + 1
    ev["reads"] = {"entries": len(ctx.reads), "by_purpose": purposes, "val_reads_not_allowed": bad}
    if bad:
        fails.append(f"validation shard(s) opened by training for another purpose than evaluation: {', '.join(bad)}")


def _check_calibration(ctx: AuditContext, ev: dict, fails: list[str]) -> set:
    """The quantization's calibration source, in quant_summary.json and the artifact's manifest -> the sources."""
    calib = ctx.quant.calibration if ctx.quant is not None else None
    art_calib = None
    try:
        art_calib = read_artifact(ctx.run.artifact)[0].get("extra", {}).get("calibration")
    except Exception as exc:  # an unreadable artifact is reported, not raised
        ev["artifact_error"] = str(exc)
    ev["calibration"] = {"quant_summary": calib, "artifact_manifest": art_calib}
    srcs = {c.get("source") if isinstance(c, dict) else None for c in (calib, art_calib) if c is not None}
    if not srcs:
        fails.append("no calibration record (quant_summary.json or the artifact manifest)")
    for s in srcs:
        if s not in CALIBRATION_SOURCES:
            fails.append(f"quantization calibrated on {s!r} data (allowed: selfgen, train)")
    if len(srcs) > 1:
        fails.append(f"calibration source differs between quant_summary.json and the artifact: {sorted(map(str, srcs))}")
    return srcs


def _check_manifest(ctx: AuditContext, layout, ev: dict, fails: list[str], skips: list[str]) -> None:
    """The prepared data's manifest: shard hashes and document fingerprints."""
    manifest = layout.manifest
    ev["manifest"] = str(layout.manifest_path)
    shas = {name: (v.get("sha256") if isinstance(v, dict) else v) for name, v in (manifest.get("shards") or {}).items()}
    files = sorted(layout.dataset_dir.glob("fineweb_*.bin"))
    train_bytes = sum(f.stat().st_size for f in files if "_train_" in f.name)
    hash_train = train_bytes <= SHA_TRAIN_MAX_BYTES
    checked, mism, unlisted = 0, [], []
    for f in files:
        if "_train_" in f.name and not hash_train:
            continue
        if f.name not in shas:
            unlisted.append(f.name)
            continue
        checked += 1
        if _sha256(f) != shas[f.name]:
            mism.append(f.name)
    missing = sorted(set(shas) - {f.name for f in files})
    ev["shards"] = {"hashed": checked, "mismatched": mism, "not_in_manifest": unlisted, "missing": missing,
                    "train_hashed": hash_train}
    if mism:
        fails.append(f"shard sha256 differs from the manifest: {', '.join(mism)} (data changed after prepare)")
    if unlisted or missing:
        fails.append(f"shards not in the manifest {unlisted} / listed but missing {missing}")
    hfile = layout.root / str(manifest.get("docs_hashes_file", "doc_hashes.json"))
    if not hfile.is_file() or "docs_hashes_file" not in manifest:
        skips.append(f"no document fingerprints ({hfile.name}) for this manifest: disjointness not checked")
        return
    hashes = json.loads(hfile.read_text(encoding="utf-8"))
    hv, ht = list(hashes.get("val", [])), list(hashes.get("train", []))
    overlap = sorted(set(hv) & set(ht))
    val = ctx.val
    val_docs = int(np.count_nonzero(val.stream == int(val.sp.bos_id())))
    ev["documents"] = {"val": len(hv), "train": len(ht), "overlap": len(overlap), "overlap_examples": overlap[:5],
                       "val_docs_in_stream": val_docs}
    if overlap:
        fails.append(f"{len(overlap)} documents are in both train and val (e.g. {overlap[0]})")
    for split, hs in (("val", hv), ("train", ht)):
        want = manifest.get(f"{split}_docs_digest")
        if want is not None and _digest(hs) != want:
            fails.append(f"{hfile.name}: the {split} fingerprints do not match the manifest's digest")
    if val_docs != len(hv):
        fails.append(f"the validation stream has {val_docs} documents, {hfile.name} lists {len(hv)}")


def check_data(ctx: AuditContext) -> CheckResult:
    """Train/val disjoint, shards as in the manifest, validation shards read only for evaluation,
    calibration on selfgen or training data; data without a manifest: SKIP."""
    ev: dict = {"data_path": ctx.cfg.data.path}
    fails: list[str] = []
    skips: list[str] = []
    _check_reads(ctx, ev, fails)
    srcs = _check_calibration(ctx, ev, fails)
    try:
        layout = find_layout(ctx.cfg.data.path)
    except VerifyError as exc:
        layout = None
        fails.append(str(exc))
    manifest = layout.manifest if layout else None
    if layout is not None and manifest is None:
        skips.append(f"no manifest beside {layout.dataset_dir} (e.g. challenge-downloaded data): document "
                     "disjointness and shard hashes not checked")
    if manifest is not None:
        _check_manifest(ctx, layout, ev, fails, skips)
    if fails:
        return CheckResult("data", FAIL, ev, "; ".join(fails))
    if skips:
        return CheckResult("data", SKIP, ev, "SKIP (no manifest): " + "; ".join(skips) if manifest is None
                           else "; ".join(skips))
    d = ev["documents"]
    calib_txt = "/".join(str(s) for s in srcs if s) or f"none ({ctx.cfg.quant.method}, no calibration data)"
    return CheckResult("data", PASS, ev,
                       f"{d['val']} val / {d['train']} train documents, none shared; {ev['shards']['hashed']} shards "
                       f"match the manifest sha256; val shards read only for {', '.join(VAL_READ_PURPOSES)}; "
                       f"calibration {calib_txt}")


# ------------------------------------------------------------------------------------------------ reference


def check_reference(ctx: AuditContext) -> CheckResult:
    """No reference setting or non-compliant label; results.json's settings are config.json's."""
    cfg = ctx.cfg
    ev, fails = {}, []
    for mode in ctx.modes:
        r = ctx.mode_result(mode)
        st = r.get("settings", {})
        slot, ttt = st.get("slot"), st.get("ttt")
        e = {"label": r.get("label"), "compliant": r.get("compliant")}
        if slot is not None:
            e["slot_coupling"] = slot.get("coupling")
            if slot.get("coupling") == "shared":
                fails.append(f"{mode}: score.slot.coupling=shared (one SLOT delta fitted on the batch's scored targets)")
            if slot != to_dict(cfg.score.slot):
                fails.append(f"{mode}: the SLOT settings in results.json differ from config.json")
        if ttt is not None:
            e["ttt_mode"] = ttt.get("mode")
            if ttt.get("mode") == "prequant":
                fails.append(f"{mode}: score.ttt.mode=prequant (weights trained on every validation token before scoring)")
            if ttt != to_dict(cfg.score.ttt):
                fails.append(f"{mode}: the TTT settings in results.json differ from config.json")
        lora = st.get("lora")
        if lora is not None:
            e["lora_order"] = lora.get("order")
            if lora.get("order") == "update_first":
                fails.append(f"{mode}: score.lora.order=update_first (each chunk trained on before it is scored)")
            if lora != to_dict(lora_settings(cfg.score).lora):
                fails.append(f"{mode}: the LoRA settings in results.json differ from config.json")
        if (MODES[mode].slot and slot is None) or (MODES[mode].ttt and ttt is None) or \
                (MODES[mode].family == "lora" and lora is None):
            fails.append(f"{mode}: results.json does not record the mode's settings")
        if r.get("compliant") is not True:
            fails.append(f"{mode}: labelled {r.get('label')!r}")
        ev[mode] = e
    if fails:
        return CheckResult("reference", FAIL, ev, "; ".join(dict.fromkeys(fails)))
    labels = ", ".join(f"{m} [{e['label']}]" for m, e in ev.items())
    return CheckResult("reference", PASS, ev, f"no reference mode: {labels}")
