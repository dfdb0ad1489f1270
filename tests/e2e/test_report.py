"""`pgolf report` end to end through its argparse verb: files written, plots non-trivial, the text report.

The run directories are the synthetic ones of tests/unit/test_report.py (training a real model per seed
costs ~35 s on CPU; the real files' layout is the same, see `make_run`).
"""

from __future__ import annotations

import argparse
import json

import pytest

from pgolf.tools.report import PLOT_DPI, PLOT_FILES, PLOT_SIZE, add_report_parser, png_size
from tests.helpers.runs import make_run

SECTION_9_3 = ("author", "github_id", "name", "blurb", "date", "val_loss", "val_bpb", "bytes_total", "bytes_code",
               "track", "val_loss_std", "val_bpb_std", "seeds", "seed_results", "t_statistic", "welch_df",
               "artifact_bytes_mean", "artifact_bytes_max", "train_steps_mean", "step_avg_ms_mean", "hardware",
               "pytorch_version", "cuda_version", "calibration", "technique_summary", "comparison_baseline_pr",
               "delta_vs_baseline_nats", "delta_vs_baseline_bpb", "compliance")
COMPLIANCE_KEYS = ("train_under_600s", "artifact_under_16mb", "eval_under_600s", "no_slot", "no_pre_quant_ttt",
                   "no_etlb", "no_ngram_cache", "score_first_ttt", "three_seeds")


def run_cli(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="pgolf")
    add_report_parser(p.add_subparsers(dest="verb", required=True))
    args = p.parse_args(argv)
    return args.fn(args)


@pytest.fixture
def record_runs(tmp_path):
    """Three seeds shaped like a record attempt: 600 logged train steps, near-cap artifacts, three modes."""
    root = tmp_path / "runs"
    dirs = []
    for i, seed in enumerate((42, 314, 999)):
        losses = {"plain": 1.925 + 0.0006 * i, "sliding": 1.8820 + 0.0006 * i, "ttt": 1.8790 + 0.0005 * i}
        dirs.append(make_run(root, seed, losses, bpb_ratio=1.6884536, steps=6900 + 10 * i, train_seconds=598.0,
                             total_bytes=15_880_000 + 40_000 * i, eval_seconds=420.0, n_train=600, n_val=8,
                             gpu="NVIDIA H100 80GB HBM3", world_size=8, sets=("budget.target_hardware=8xH100 SXM",),
                             audit={"status": "PASS", "checks": [{"name": "causality", "status": "PASS",
                                                                  "message": "", "evidence": {}}]}))
    return dirs


def test_report_cli_writes_record_files(record_runs, tmp_path, capsys):
    out = tmp_path / "rep"
    base = "1.8900,1.8913,1.8894"
    assert run_cli(["report", *map(str, record_runs), "--baseline", base, "--out", str(out), "--name", "t",
                    "--author", "me", "--baseline-pr", "549"]) == 0
    text = capsys.readouterr().out
    assert "primary mode ttt" in text and "seed" in text and "mean" in text and "std" in text
    assert "improvement of at least 0.005 nats shown at p < 0.01" in text
    assert f"wrote {out}/" in text

    sub = json.loads((out / "submission.json").read_text())
    missing = [k for k in SECTION_9_3 if k not in sub]
    assert not missing, missing
    assert all(isinstance(sub["compliance"][k], bool) for k in COMPLIANCE_KEYS)
    assert sub["compliance"]["three_seeds"] and sub["compliance"]["audit_passed"]
    assert sub["compliance"]["measured_on_target_hardware"]
    assert sub["seeds"] == [42, 314, 999] and sub["bytes_total"] == 15_960_000
    assert sub["val_loss"] == pytest.approx(1.8795) and sub["hardware"] == "8xNVIDIA H100 80GB HBM3"
    assert set(sub["seed_results"]["42"]) >= {"val_loss", "val_bpb", "artifact_bytes", "steps", "step_avg_ms",
                                              "eval_time_s"}
    assert sub["t_statistic"] < 0 and sub["comparison_baseline_pr"] == 549

    readme = (out / "README.md").read_text()
    assert "| seed |" in readme and "One-sided Welch t-test" in readme and "## Compliance" in readme
    for fn in PLOT_FILES.values():
        assert f"]({fn})" in readme
    rep = json.loads((out / "report.json").read_text())
    assert rep["significance"]["significant"] and rep["submission"]["val_bpb"] == sub["val_bpb"]
    assert rep["plots"] == PLOT_FILES

    for key, fn in PLOT_FILES.items():
        p = out / fn
        assert p.stat().st_size > 15_000, (fn, p.stat().st_size)
        w, h = PLOT_SIZE[key]
        assert png_size(p) == (round(w * PLOT_DPI), round(h * PLOT_DPI))


def test_report_default_out_json_and_partial(tmp_path, capsys):
    dirs = [make_run(tmp_path / "runs", s, {"plain": 4.9 + s / 100, "sliding": 4.89 + s / 100}, partial=True,
                     total_bytes=202_000) for s in (1, 2)]
    assert run_cli(["report", *map(str, dirs), "--no-plots", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    out = tmp_path / "runs" / "report"
    assert rep["out"] == str(out) and (out / "submission.json").is_file() and not (out / "train_loss.png").exists()
    assert rep["partial"] and "partial" in rep["submission"]
    assert "not a challenge score" in (out / "README.md").read_text()
    assert run_cli(["report", *map(str, dirs), "--no-plots", "--baseline", str(out)]) == 0  # own folder as baseline
    text = capsys.readouterr().out
    assert "WARNING: partial score" in text and "NOT shown" in text
