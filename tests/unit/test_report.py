"""pgolf.tools.report: Welch statistics (STACK.md section 9.1), aggregation of synthetic run dirs, baselines, errors.

The run directories here are small fakes with the files `pipeline.run_record` writes (results.json,
config.json, train_summary.json, metrics.jsonl, env.json, optional audit.json in the format `pgolf audit`
writes); no model is trained.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
from scipy import stats

from pgolf.config import ConfigError
from pgolf.rundir import RunDirError
from pgolf.telemetry import hardware_matches
from pgolf.tools.report import (
    NOT_AUDITED,
    aggregate,
    audit_status,
    baseline_from_submission,
    build_report,
    load_baseline,
    load_runs,
    parse_values,
    submission,
    welch_from_stats,
    welch_t,
)
from tests.helpers.runs import make_run

# STACK.md section 9.1: "#1019 vs #549: t = -11.83, df = 3.31 (nats delta -0.00784)". The per-seed scores
# are those the #1019 record README quotes from the #549 logs and its own (val_bpb, exact); t and df do not
# depend on the unit, since nats/token = 1.6884536 x BPB for every seed on SP1024 (STACK.md section 1.5).
R1019_BPB = [1.11508120, 1.11437394, 1.11475014]
R549_BPB = [1.11922988, 1.12002032, 1.11888882]
NATS_PER_BPB = 1.6884536


def three_runs(root: Path, losses=((2.00, 1.95), (2.01, 1.96), (2.02, 1.94)), **kw) -> list[Path]:
    return [make_run(root, s, {"plain": a, "sliding": b}, steps=100 + s, total_bytes=15_900_000 + 1000 * s, **kw)
            for s, (a, b) in zip((1, 2, 3), losses, strict=True)]


def audit_json(*checks: tuple[str, str]) -> dict:
    """audit.json as `pgolf audit` writes it, with these (name, status) checks."""
    status = "FAIL" if any(s == "FAIL" for _, s in checks) else "PASS"
    return {"run_dir": "x", "status": status, "device": "cpu", "pgolf": "0", "max_val_tokens": None, "modes": [],
            "probe_prefix_tokens": {}, "seconds": 1.0,
            "checks": [{"name": n, "status": s, "message": "", "evidence": {}} for n, s in checks]}


# ------------------------------------------------------------------------------------------------ Welch


def test_welch_reproduces_stack_9_1():
    t, df, p = welch_t(R1019_BPB, R549_BPB)  # two-sided, against a zero difference
    assert (round(t, 2), round(df, 2)) == (-11.83, 3.31)
    ref = stats.ttest_ind(R1019_BPB, R549_BPB, equal_var=False)
    assert t == pytest.approx(ref.statistic, rel=1e-12) and p == pytest.approx(ref.pvalue, rel=1e-9)
    tn, dfn, _ = welch_t([x * NATS_PER_BPB for x in R1019_BPB], [x * NATS_PER_BPB for x in R549_BPB])
    assert (round(tn, 2), round(dfn, 2)) == (-11.83, 3.31)  # the same in nats
    # the nats delta quoted there
    assert statistics.fmean(R1019_BPB) * NATS_PER_BPB - statistics.fmean(R549_BPB) * NATS_PER_BPB == pytest.approx(
        -0.00784, abs=5e-6)


def test_record_1019_passes_the_margin_test_narrowly():
    ours, base = [x * NATS_PER_BPB for x in R1019_BPB], [x * NATS_PER_BPB for x in R549_BPB]
    t, df, p = welch_t(ours, base, delta=-0.005, alternative="less")
    assert round(t, 2) == -4.29 and round(df, 2) == 3.31
    assert 0.009 < p < 0.01


@pytest.mark.parametrize("alternative", ["two-sided", "less", "greater"])
def test_welch_matches_scipy_with_delta(alternative):
    a = [1.881, 1.8825, 1.8802, 1.8831]
    b = [1.8899, 1.8903, 1.8890]
    for delta in (0.0, -0.005, 0.003):
        t, df, p = welch_t(a, b, delta=delta, alternative=alternative)
        ref = stats.ttest_ind([x - delta for x in a], b, equal_var=False, alternative=alternative)
        assert t == pytest.approx(ref.statistic, rel=1e-9)
        assert df == pytest.approx(ref.df, rel=1e-9)
        assert p == pytest.approx(ref.pvalue, rel=1e-7, abs=1e-15)


def test_one_sided_margin_clear_passes_marginal_fails():
    base = [1.8900, 1.8910, 1.8895]
    noise = [0.0003, -0.0002, 0.0001]
    clear = [b - 0.02 + e for b, e in zip(base, noise, strict=True)]
    marginal = [b - 0.0055 + e for b, e in zip(base, noise, strict=True)]
    worse = [b + 0.002 for b in base]
    _, _, p = welch_t(clear, base, delta=-0.005, alternative="less")
    assert p < 0.01
    _, _, p = welch_t(marginal, base, delta=-0.005, alternative="less")
    assert p > 0.01
    _, _, p0 = welch_t(marginal, base, delta=0.0, alternative="less")  # better, but not by the margin
    assert p0 < 0.01
    _, _, p = welch_t(worse, base, delta=-0.005, alternative="less")
    assert p > 0.99


def test_welch_edge_cases():
    with pytest.raises(ConfigError, match="at least 2"):
        welch_t([1.0], [1.0, 2.0])
    with pytest.raises(ConfigError, match="alternative"):
        welch_t([1.0, 1.1], [1.0, 2.0], alternative="lower")
    t, df, p = welch_from_stats(1.0, 0.0, 3, 1.1, 0.0, 3, delta=-0.005, alternative="less")
    assert t == -math.inf and p == 0.0 and df == 4
    t, _, p = welch_from_stats(1.0, 0.0, 3, 1.0, 0.0, 3)
    assert math.isnan(t) and math.isnan(p)


# ------------------------------------------------------------------------------------------------ aggregation


def test_aggregation_of_synthetic_runs(tmp_path):
    dirs = three_runs(tmp_path)
    runs = load_runs(dirs)
    rep = aggregate(runs)
    assert rep == build_report(dirs)
    assert rep["seeds"] == [1, 2, 3] and rep["primary_mode"] == "sliding"  # last of score.modes
    assert list(rep["modes"]) == ["plain", "sliding"]
    s = rep["modes"]["sliding"]
    assert s["val_loss_mean"] == pytest.approx(1.95)
    assert s["val_loss_std"] == pytest.approx(statistics.stdev([1.95, 1.96, 1.94]))  # ddof = 1
    assert s["val_loss_std"] == pytest.approx(0.01)
    assert s["val_bpb_mean"] == pytest.approx(1.95 / 1.5)
    assert rep["modes"]["plain"]["val_loss_std"] == pytest.approx(0.01)
    a = rep["aggregate"]
    assert a["steps"]["mean"] == pytest.approx(102) and a["total_bytes"]["max"] == 15_903_000
    assert a["step_avg_ms"]["mean"] == pytest.approx(statistics.fmean(50_000 / (100 + s) for s in (1, 2, 3)))
    assert a["eval_seconds"]["mean"] == pytest.approx(120.0)
    f = rep["runs"][0]
    assert f["compliance"] == NOT_AUDITED and f["total_bytes"] == 15_901_000 and f["model_bytes"] == 15_801_000
    assert rep["significance"] is None and rep["partial"] is None and not rep["warnings"]
    c = rep["compliance"]
    assert c["three_seeds"] and c["artifact_under_16mb"] and c["train_under_600s"] and c["eval_under_600s"]
    assert c["no_slot"] and c["full_validation"] and not c["audited"]
    assert build_report([tmp_path])["seeds"] == [1, 2, 3]  # a folder of run directories
    rep2 = build_report(dirs, mode="plain")
    assert rep2["primary_mode"] == "plain"
    sub = submission(rep, runs)
    assert sub["val_loss"] == pytest.approx(1.95) and sub["bytes_total"] == 15_903_000
    assert sub["seed_results"]["2"]["val_loss"] == pytest.approx(1.96)
    assert sub["val_bpb"] == pytest.approx(1.3)


def test_partial_and_noncompliant_are_flagged(tmp_path):
    dirs = [make_run(tmp_path, s, {"slot": 2.0 + s / 100}, partial=True, labels={"slot": "NON-COMPLIANT (x)"},
                     total_bytes=16_000_001 if s == 2 else 15_000_000) for s in (1, 2)]
    runs = load_runs(dirs)
    rep = aggregate(runs)
    assert rep["partial"].startswith("first 8192")
    assert "partial: not a challenge score" in rep["runs"][0]["compliance"]
    assert "slot: NON-COMPLIANT (x)" in rep["runs"][0]["compliance"]
    assert "OVER the byte limit" in rep["runs"][1]["compliance"]
    c = rep["compliance"]
    assert not c["full_validation"] and not c["no_slot"] and not c["primary_mode_compliant"]
    assert not c["artifact_under_16mb"] and not c["three_seeds"]
    sub = submission(rep, runs)
    assert sub["partial"] == "first 8192 validation tokens only: not a challenge score"
    assert "NOT A CHALLENGE SCORE" in sub["blurb"]


def test_audit_status_reads_the_auditor_format():
    assert audit_status(None) == {"status": NOT_AUDITED, "passed": None, "failed": [], "skipped": [], "checks": 0}
    a = audit_status(audit_json(("causality", "PASS"), ("budgets", "FAIL"), ("ledger", "SKIP")))
    assert a == {"status": "FAIL", "passed": False, "failed": ["budgets"], "skipped": ["ledger"], "checks": 3}
    a = audit_status(audit_json(("causality", "PASS"), ("coverage", "SKIP")))
    assert a["status"] == "PASS" and a["passed"] is True and a["skipped"] == ["coverage"] and a["checks"] == 2
    assert audit_status({"status": "PASS", "checks": []})["status"] == "PASS"  # the top-level status decides


@pytest.mark.parametrize("audit", [
    {"passed": True, "checks": []},  # no top-level status
    {"status": "passed", "checks": [{"name": "x", "status": "PASS"}]},  # another spelling
    {"status": "PASS", "checks": {"causality": "PASS"}},  # checks as a mapping
    {"status": "PASS", "checks": [{"name": "causality", "status": "ok"}]},  # a check's status spelled otherwise
    {"status": "PASS", "checks": ["causality"]},  # a check that is no record
    [{"name": "causality", "status": "PASS"}],  # a bare list
])
def test_malformed_audit_json_is_one_line_naming_the_file(tmp_path, audit):
    d = make_run(tmp_path, 1, {"sliding": 2.0}, audit=audit)
    with pytest.raises(RunDirError) as e:
        build_report([d])
    assert str(d / "audit.json") in _one_line(e)


def test_target_hardware():
    """The report asks `telemetry.hardware_matches`, the auditor's rule (env.json's device decides GPU vs CPU)."""
    h100 = {"gpu": "NVIDIA H100 80GB HBM3", "world_size": 8, "device": "cuda:0"}
    assert hardware_matches("8xH100 SXM", h100) and not hardware_matches("8xH100 SXM", h100 | {"world_size": 1})
    assert not hardware_matches("8xH100 SXM", {"world_size": 8}) and not hardware_matches("any CPU", h100)
    assert not hardware_matches("8xH100 SXM", h100 | {"gpu": "NVIDIA H100 PCIe"})  # SXM target, PCIe card
    assert not hardware_matches("8xH100 SXM", h100 | {"device": "cpu"})  # a CPU run on a GPU machine
    assert hardware_matches("2-core CPU", {"cpu_count": 2, "device": "cpu"})
    assert not hardware_matches("2-core CPU", {"cpu_count": 16, "device": "cpu"})
    assert hardware_matches("any CPU", {"cpu_count": 16, "device": "cpu"})
    assert not hardware_matches("any CPU", {})  # no env.json: nothing is known about the hardware


def test_hardware_in_report(tmp_path):
    sxm = ("budget.target_hardware=8xH100 SXM",)
    gpu = [make_run(tmp_path / "gpu", s, {"sliding": 2.0 + s / 100}, gpu="NVIDIA H100 80GB HBM3", world_size=8,
                    sets=sxm) for s in (1, 2)]
    pcie = [make_run(tmp_path / "pcie", s, {"sliding": 2.0 + s / 100}, gpu="NVIDIA H100 PCIe", world_size=8,
                     sets=sxm) for s in (1, 2)]
    cpu = [make_run(tmp_path / "cpu", s, {"sliding": 2.0 + s / 100}, sets=("budget.target_hardware=2-core CPU",))
           for s in (1, 2)]
    for dirs, hw, ok in ((gpu, "8xNVIDIA H100 80GB HBM3", True), (pcie, "8xNVIDIA H100 PCIe", False),
                         (cpu, "cpu (2 cores)", True)):
        rep = build_report(dirs)
        assert rep["runs"][0]["hardware"] == hw
        assert rep["compliance"]["measured_on_target_hardware"] is ok


def test_audit_in_report(tmp_path):
    ok = audit_json(("causality", "PASS"), ("ledger", "SKIP"))
    bad = audit_json(("budgets", "FAIL"))
    d1 = make_run(tmp_path, 1, {"sliding": 2.0}, audit=ok)
    d2 = make_run(tmp_path, 2, {"sliding": 2.01}, audit=bad)
    rep = build_report([d1, d2])
    assert rep["runs"][0]["compliance"] == "audit PASS (1 skipped)"
    assert rep["runs"][1]["compliance"] == "audit FAIL: budgets"
    assert rep["compliance"]["audited"] and not rep["compliance"]["audit_passed"]


def test_consistency_warnings(tmp_path):
    d1 = make_run(tmp_path / "a", 1, {"sliding": 2.0})
    d2 = make_run(tmp_path / "b", 1, {"sliding": 2.01}, sets=("train.iterations=7",))
    (d2 / "metrics.jsonl").write_text('{"kind": "train", "step": 1, "train_loss": 6.0}\n{"kind": "tr')
    rep = build_report([d1, d2])
    w = "\n".join(rep["warnings"])
    assert "seed(s) 1 appear more than once" in w
    assert "config differs" in w and "train.iterations" in w
    assert "skipped 1 unreadable line" in w


# ------------------------------------------------------------------------------------------------ baselines


def test_baseline_values_and_significance(tmp_path):
    dirs = three_runs(tmp_path)
    rep = build_report(dirs, baseline=["1.99,2.00,1.98"])
    sig = rep["significance"]
    t, df, p = welch_t([1.95, 1.96, 1.94], [1.99, 2.00, 1.98], delta=-0.005, alternative="less")
    assert (sig["t"], sig["df"], sig["p"]) == pytest.approx((t, df, p))
    assert sig["significant"] == (p < 0.01) and sig["delta_nats"] == pytest.approx(-0.04)
    assert sig["margin_bpb"] == pytest.approx(0.005 / 1.5)
    assert rep["baseline"]["kind"] == "values" and rep["baseline"]["n"] == 3


def test_baseline_from_submission_variants(tmp_path):
    full = tmp_path / "full.json"
    full.write_text(json.dumps({"val_loss": 1.9, "seed_results": {"1": {"val_loss": 1.89}, "2": {"val_loss": 1.91}}}))
    b = baseline_from_submission(full)
    assert b.values == [1.89, 1.91] and b.n == 2
    bpb_only = tmp_path / "bpb.json"
    bpb_only.write_text(json.dumps({"val_loss": 3.0, "val_bpb": 2.0, "seeds": [1, 2],
                                    "seed_results": {"1": {"val_bpb": 1.9}, "2": {"val_bpb": 2.1}}}))
    b = baseline_from_submission(bpb_only)
    assert b.values == pytest.approx([2.85, 3.15]) and "converted" in b.notes[0]
    summ = tmp_path / "summary.json"
    summ.write_text(json.dumps({"val_loss": 1.9, "val_loss_std": 0.001, "seeds": [1, 2, 3]}))
    b = baseline_from_submission(summ)
    assert (b.mean, b.std, b.n, b.values) == (1.9, 0.001, 3, None)
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps({"val_loss": 1.9}))
    with pytest.raises(ConfigError, match="cannot run a Welch test"):
        baseline_from_submission(bare)


def test_baseline_run_dirs_and_own_submission(tmp_path):
    base_dirs = three_runs(tmp_path / "base", losses=((2.0, 1.99), (2.0, 2.0), (2.0, 2.01)))
    ours = three_runs(tmp_path / "ours")
    by_parent = load_baseline([str(tmp_path / "base")])
    by_dirs = load_baseline([str(d) for d in base_dirs])
    assert by_parent.values == by_dirs.values == pytest.approx([1.99, 2.0, 2.01]) and by_parent.mode == "sliding"
    assert load_baseline([str(tmp_path / "base")], mode="plain").values == pytest.approx([2.0, 2.0, 2.0])
    # a submission.json written by the report reads back as a baseline with the same per-seed values
    base_runs = load_runs(base_dirs)
    (tmp_path / "sub.json").write_text(json.dumps(submission(aggregate(base_runs), base_runs)))
    b = load_baseline([str(tmp_path / "sub.json")])
    assert b.values == pytest.approx([1.99, 2.0, 2.01])
    assert build_report(ours, baseline=[str(tmp_path / "sub.json")])["significance"]["significant"]


# ------------------------------------------------------------------------------------------------ errors


def _one_line(exc) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg
    return msg


def test_errors_are_one_line(tmp_path):
    good = make_run(tmp_path, 1, {"sliding": 2.0})
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError) as e:
        build_report([good, empty])
    assert str(empty / "results.json") in _one_line(e)
    with pytest.raises(ConfigError) as e:
        build_report([])
    assert "no run directories" in _one_line(e)
    noconf = make_run(tmp_path / "x", 2, {"sliding": 2.0})
    (noconf / "config.json").unlink()
    with pytest.raises(FileNotFoundError) as e:
        build_report([noconf])
    assert "config.json" in _one_line(e)
    bad = make_run(tmp_path / "y", 3, {"sliding": 2.0})
    (bad / "results.json").write_text("{not json")
    with pytest.raises(RunDirError) as e:
        build_report([bad])
    assert "results.json: not valid JSON" in _one_line(e)
    with pytest.raises(ConfigError) as e:
        build_report([good], mode="slot")
    assert "no 'slot' score" in _one_line(e)
    with pytest.raises(ConfigError) as e:
        build_report([good, good])
    assert "given twice" in _one_line(e)
    for spec, exc, text in [("1.9", ConfigError, "at least 2"), ("1.9,abc", FileNotFoundError, "baseline not found"),
                            (str(tmp_path / "nope"), FileNotFoundError, "baseline not found"),
                            (str(empty), FileNotFoundError, "no results.json"), ("1.9,-2", ConfigError, "positive")]:
        with pytest.raises(exc) as e:
            build_report([good], baseline=[spec])
        assert text in _one_line(e)
    with pytest.raises(ConfigError):
        parse_values(",")
