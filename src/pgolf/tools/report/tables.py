"""What the report writes as text: the runs and scores tables (plain and markdown), the statistics
paragraph, the terminal report, submission.json (docs/DESIGN.md#submission-json) and README.md."""

from __future__ import annotations

import datetime
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pgolf
from pgolf.config import diff
from pgolf.presets import PRESETS, get_preset
from pgolf.tools.report.fmt import clean, fmt_int, fmt_num, fmt_p, partial_what, round_or_none
from pgolf.tools.report.runs import PARTIAL_NOTE, SeedRun
from pgolf.tools.report.stats import MARGIN_NATS, PROGRESSION_ALPHA

REPORT_FILES = ("submission.json", "README.md", "report.json")
PLOT_TITLES = {"train_loss": "Training loss over steps and time", "val_bpb": "Validation BPB during training",
               "bpb_by_mode": "BPB per evaluation mode", "artifact_bytes": "Submission bytes against the cap"}


def tables(rep: dict) -> list[tuple[list[str], list[list[str]]]]:
    """The runs table and the scores table as (headers, rows)."""
    facts = rep["runs"]
    runs_h = ["seed", "steps", "ms/step", "train s", "eval s", "total bytes", "compliance"]
    runs_rows = [[str(f["seed"]), fmt_int(f["steps"]), fmt_num(f["step_avg_ms"], 1), fmt_num(f["train_seconds"], 1),
                  fmt_num(f["eval_seconds"], 1), fmt_int(f["total_bytes"]), f["compliance"] or "-"] for f in facts]
    a = rep["aggregate"]
    for k in ("mean", "max"):
        runs_rows.append([k, fmt_int(a["steps"][k]), fmt_num(a["step_avg_ms"][k], 1),
                          fmt_num(a["train_seconds"][k], 1), fmt_num(a["eval_seconds"][k], 1),
                          fmt_int(a["total_bytes"][k]), ""])
    modes = list(rep["modes"])
    sc_h = ["seed"]
    for m in modes:
        star = "*" if m == rep["primary_mode"] else ""
        sc_h += [f"{m}{star} val_loss", f"{m}{star} val_bpb"]
    sc_rows = []
    for f in facts:
        row = [str(f["seed"])]
        for m in modes:
            v = f["modes"].get(m)
            row += [fmt_num(v["val_loss"]), fmt_num(v["val_bpb"])] if v else ["-", "-"]
        sc_rows.append(row)
    for key, label in (("mean", "mean"), ("std", "std")):
        row = [label]
        for m in modes:
            s = rep["modes"][m]
            row += [fmt_num(s[f"val_loss_{key}"]), fmt_num(s[f"val_bpb_{key}"])]
        sc_rows.append(row)
    return [(runs_h, runs_rows), (sc_h, sc_rows)]


def text_table(headers: list[str], rows: list[list[str]]) -> str:
    w = [max(len(headers[i]), *(len(r[i]) for r in rows)) for i in range(len(headers))]
    last = len(headers) - 1

    def line(cells):
        return "  ".join(c.ljust(w[i]) if i == 0 or (i == last and headers[i] == "compliance") else c.rjust(w[i])
                         for i, c in enumerate(cells)).rstrip()

    return "\n".join([line(headers), line(["-" * x for x in w])] + [line(r) for r in rows])


def md_table(headers: list[str], rows: list[list[str]]) -> str:
    align = ["---"] + ["---:" if h != "compliance" else "---" for h in headers[1:]]
    esc = [[c.replace("|", "\\|") for c in r] for r in rows]
    return "\n".join(["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
                     + ["| " + " | ".join(r) + " |" for r in esc])


def stats_paragraph(rep: dict, markdown: bool = False) -> str:
    sig, base = rep["significance"], rep["baseline"]
    b = "**" if markdown else ""
    if sig is None:
        return ("No baseline given: significance not tested (pass --baseline with a submission.json, run "
                "directories or per-seed val_loss values in nats).")
    dbpb = sig.get("delta_bpb_measured", sig.get("delta_bpb"))
    conv = (f" (for this tokenizer {MARGIN_NATS} nats = {sig['margin_bpb']:.5f} BPB)" if sig.get("margin_bpb")
            else "")
    no = sig["no_margin"]
    notes = f" [{'; '.join(base['notes'])}]" if base.get("notes") else ""
    return (f"One-sided Welch t-test (docs/DESIGN.md#record-test) of H0: mean val_loss(ours) - mean val_loss(baseline) "
            f">= -{MARGIN_NATS} nats{conv}. Ours: {sig['n_ours']} seeds, mean {sig['mean_ours']:.8f} nats "
            f"(std {fmt_num(sig['std_ours'], 8)}); baseline {base['source']}: n = {sig['n_baseline']}, mean "
            f"{sig['mean_baseline']:.8f} (std {fmt_num(sig['std_baseline'], 8)}){notes}. Delta "
            f"{sig['delta_nats']:+.8f} nats" + (f" ({dbpb:+.8f} BPB)" if dbpb is not None else "") +
            f". t = {sig['t']:.2f}, Welch df = {sig['df']:.2f}, p = {fmt_p(sig['p'])}: {b}{sig['verdict']}{b}. "
            f"Without the margin (H0: no improvement): t = {no['t']:.2f}, p = {fmt_p(no['p'])}"
            f" ({'below' if no['significant_progression'] else 'not below'} the p < {PROGRESSION_ALPHA} "
            "progression cutoff of PR #1902).")


def format_text(rep: dict, out: Path | None = None) -> str:
    """The terminal report: headline, both tables, the score, the test, the false flags, the warnings."""
    prim, ps = rep["primary_mode"], rep["modes"][rep["primary_mode"]]
    head = (f"pgolf report: {len(rep['runs'])} run(s), preset {rep['preset']}, seeds "
            f"{', '.join(map(str, rep['seeds']))}; primary mode {prim} (*)")
    lines = [head]
    if rep["partial"]:
        lines.append(f"WARNING: partial score ({partial_what(rep['partial'])}): not a challenge score")
    (rh, rr), (sh, sr) = tables(rep)
    lines += ["", text_table(rh, rr), "", text_table(sh, sr), ""]
    lines.append(f"score ({prim}): val_bpb {fmt_num(ps['val_bpb_mean'], 8)} (std {fmt_num(ps['val_bpb_std'], 8)}), "
                 f"val_loss {fmt_num(ps['val_loss_mean'], 8)} nats (std {fmt_num(ps['val_loss_std'], 8)}); "
                 f"max {fmt_int(rep['aggregate']['total_bytes']['max'])} bytes")
    sig = rep["significance"]
    if sig:
        lines.append(f"vs baseline {rep['baseline']['source']}: delta {sig['delta_nats']:+.6f} nats, "
                     f"t = {sig['t']:.2f}, df = {sig['df']:.2f}, p = {fmt_p(sig['p'])} -> {sig['verdict']}")
    else:
        lines.append("no baseline: significance not tested (--baseline)")
    c = rep["compliance"]
    bad = [k for k, v in c.items() if v is False]
    lines.append("compliance: " + ("all flags true" if not bad else "false: " + ", ".join(bad)))
    for w in rep["warnings"]:
        lines.append(f"warning: {w}")
    if out is not None:
        names = ", ".join(list(REPORT_FILES) + list(rep.get("plots", {}).values()))
        lines.append(f"wrote {out}/: {names}")
    return "\n".join(lines)


def _calibration(cal: dict) -> str | None:
    if not cal:
        return None
    temp = f", temp={cal['temperature']}" if "temperature" in cal else ""
    return f"{cal.get('source', '?')} ({cal.get('seqs', '?')} seqs x {cal.get('seq_len', '?')} tokens{temp})"


def submission(rep: dict, runs: Sequence[SeedRun], *, name: str = "", author: str = "", github_id: str = "",
               blurb: str = "", track: str = "10min_16mb", baseline_pr: int | None = None) -> dict:
    """submission.json with the fields of docs/DESIGN.md#submission-json (val_* = the primary mode's seed means);
    `runs` (the report's seeds) give the versions and the quantization facts of the first seed."""
    prim, ps, facts = rep["primary_mode"], rep["modes"][rep["primary_mode"]], rep["runs"]
    a = rep["aggregate"]
    totals = [f["total_bytes"] for f in facts]
    env = runs[0].env if runs else {}
    q = runs[0].quant.to_json() if runs and runs[0].quant is not None else {}
    technique = (f"pgolf {pgolf.__version__} preset {rep['preset']}: {q.get('method', '?')} "
                 f"int{q.get('matrix_bits', '?')} matrices / int{q.get('embed_bits', '?')} tables, "
                 f"{facts[0].get('compressor') or '?'}; scored with {prim}")
    sig = rep["significance"]
    auto_blurb = (f"{len(facts)}-seed mean {prim} val_bpb {ps['val_bpb_mean']:.8f} / val_loss "
                  f"{ps['val_loss_mean']:.8f} nats")
    if sig:
        auto_blurb += (f"; vs baseline {sig['delta_nats']:+.8f} nats (Welch t={sig['t']:.2f}, df={sig['df']:.2f}, "
                       f"one-sided p={fmt_p(sig['p'])} with the {MARGIN_NATS}-nat margin)")
    if rep["partial"]:
        auto_blurb += f". {PARTIAL_NOTE.upper()}"
    sub: dict[str, Any] = {
        "author": author, "github_id": github_id, "name": name or f"pgolf {rep['preset']}",
        "blurb": blurb or auto_blurb, "date": datetime.date.today().isoformat(), "track": track,
        "val_loss": round(ps["val_loss_mean"], 8), "val_bpb": round(ps["val_bpb_mean"], 8),
        "val_loss_std": round_or_none(ps["val_loss_std"]), "val_bpb_std": round_or_none(ps["val_bpb_std"]),
        "seeds": [f["seed"] for f in facts],
        "seed_results": {str(f["seed"]): {
            "val_loss": round(f["modes"][prim]["val_loss"], 8), "val_bpb": round(f["modes"][prim]["val_bpb"], 8),
            "artifact_bytes": f["total_bytes"], "model_bytes": f["model_bytes"], "steps": f["steps"],
            "step_avg_ms": round(f["step_avg_ms"], 2),
            "eval_time_s": round_or_none(f["modes"][prim]["seconds"], 2)} for f in facts},
        "bytes_total": max(totals), "bytes_code": max(f["code_bytes"] or 0 for f in facts),
        "artifact_bytes_mean": round(statistics.fmean(totals)), "artifact_bytes_max": max(totals),
        "train_steps_mean": round(a["steps"]["mean"], 2), "step_avg_ms_mean": round(a["step_avg_ms"]["mean"], 2),
        "eval_mode": prim,
        "hardware": facts[0]["hardware"], "pytorch_version": env.get("torch"), "cuda_version": env.get("cuda"),
        "flash_attn_version": env.get("flash_attn"), "calibration": _calibration(q.get("calibration") or {}),
        "technique_summary": technique,
    }
    if baseline_pr is not None:
        sub["comparison_baseline_pr"] = baseline_pr
    if sig:
        sub["delta_vs_baseline_nats"] = round(sig["delta_nats"], 8)
        sub["delta_vs_baseline_bpb"] = round_or_none(sig.get("delta_bpb_measured", sig.get("delta_bpb")))
        sub["t_statistic"] = round_or_none(sig["t"], 4)
        sub["welch_df"] = round_or_none(sig["df"], 4)
        sub["p_value"] = clean(sig["p"])
        sub["significant_at_0.01"] = sig["significant"]
    if rep["partial"]:
        sub["partial"] = f"{partial_what(rep['partial'])}: not a challenge score"
    sub["compliance"] = rep["compliance"]
    return clean(sub)


def readme(rep: dict, sub: dict, runs: Sequence[SeedRun]) -> str:
    """README.md of the record folder; the configuration section lists the first seed's overrides."""
    prim, ps = rep["primary_mode"], rep["modes"][rep["primary_mode"]]
    (rh, rr), (sh, sr) = tables(rep)
    parts = [f"# {sub['name']}", "",
             f"**val_bpb: {fmt_num(ps['val_bpb_mean'], 8)}** ({len(rep['runs'])}-seed mean of `{prim}`, std "
             f"{fmt_num(ps['val_bpb_std'], 8)}; val_loss {fmt_num(ps['val_loss_mean'], 8)} nats) | "
             f"**{fmt_int(sub['bytes_total'])} bytes** (max over seeds) | {sub['hardware']}", ""]
    if rep["partial"]:
        parts += [f"> **Partial score: not a challenge score.** Scored on the {partial_what(rep['partial'])}.", ""]
    parts += ["## Runs", "", md_table(rh, rr), "",
              "total bytes = code + compressed model (decimal; the cap is 16,000,000). "
              "train s = training wallclock; eval s = all scoring passes of the run.", "",
              "## Scores", "", md_table(sh, sr), "",
              f"val_loss in nats/token, val_bpb in bits/byte, scored from the artifact on disk; `*` = the primary "
              f"mode (`{prim}`), the one submitted. std = sample standard deviation (ddof = 1).", "",
              "## Statistics", "", stats_paragraph(rep, markdown=True), "", "## Compliance", ""]
    for k, v in rep["compliance"].items():
        parts.append(f"- `{k}`: {'n/a' if v is None else str(v).lower()}")
    if not rep["compliance"]["measured_on_target_hardware"]:
        parts += ["", f"Time budgets were measured on {sub['hardware']}, not on the target hardware: "
                      "they say nothing about the challenge's 600 s limits."]
    if rep["warnings"]:
        parts += ["", "## Warnings", ""] + [f"- {w}" for w in rep["warnings"]]
    cfg = runs[0].cfg if runs else None
    if cfg is not None and cfg.preset in PRESETS:
        d = {k: v for k, v in diff(cfg, get_preset(cfg.preset)).items() if k not in ("seed", "run_id")}
        parts += ["", "## Configuration", "", f"Preset `{cfg.preset}` with these overrides:", ""]
        parts += [f"- `{k}`: {a!r} -> {b!r}" for k, (a, b) in d.items()] or ["- (none)"]
    if rep.get("plots"):
        parts += ["", "## Plots", ""]
        for k, fn in rep["plots"].items():
            title = PLOT_TITLES.get(k, k)
            parts += [f"### {title}", "", f"![{title}]({fn})", ""]
    return "\n".join(parts).rstrip() + "\n"
