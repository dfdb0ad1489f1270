"""The auditor's parts without a trained run: probe placement, the SCORED_TAP hook, the self-prediction
probe's sign on the shared-SLOT reference mode, the target-level TTT ledger check, hardware matching,
coverage's summary of what it re-scored, and the budget and data checks on fake run directories read
through pgolf.rundir. (tests/e2e/test_audit.py audits real runs.)"""

import hashlib
import json
from types import SimpleNamespace

import numpy as np
import pytest

from pgolf.data.shards import write_shard
from pgolf.presets import resolve
from pgolf.runtime import DistEnv
from pgolf.scoring.evaluate import mode_plan
from pgolf.telemetry import describe_hardware, hardware_matches
from pgolf.tools.audit.causality import probe_mode, probe_points, run_mode
from pgolf.tools.audit.checks_run import check_budgets, check_data
from pgolf.tools.audit.checks_scoring import ledger_problems, reproduction_summary
from pgolf.tools.audit.context import ValData
from tests.helpers.audit import CPU, NO_VAL, H100x8, fake_context
from tests.helpers.models import CAUSALITY_SETS as SETS
from tests.helpers.models import make_data, perturbed_tiny_model

N = 208  # T = 48, S = 16, 4 windows per batch, TTT chunks of 64 (tests/unit/test_causality.py)

pytestmark = pytest.mark.usefixtures("one_thread")


def cfg_with(*sets):
    cfg, _ = resolve("tiny", [*SETS, *sets], env={})
    return cfg


def test_probe_points_hit_window_batch_segment_chunk_and_end():
    cfg = cfg_with()
    plan = mode_plan("slot", N, cfg)  # windows: 0 scores [0, 48), w >= 1 scores [16w + 32, 16w + 48)
    pts = dict((k, t) for t, k in probe_points("slot", plan, cfg, warm_segments=2))
    assert pts["window"] == plan.scored_range(6)[0] == 128  # mid-batch window: window 7 adapts on it
    assert pts["batch"] == plan.scored_range(4)[0] == 96
    assert "segment" not in pts  # 3 batches in 2 segments {0}, {1, 2}: the segment boundary is the batch one
    longer = mode_plan("slot", 300, cfg)  # 17 windows, 5 batches; 2 segments: batches {0, 1}, {2, 3, 4}
    assert (longer.scored_range(8)[0], "segment") in probe_points("slot", longer, cfg, warm_segments=2)
    assert pts["end"] == N - 2
    ttt = [(t, k) for t, k in probe_points("ttt", mode_plan("ttt", N, cfg), cfg, 8) if k == "chunk"]
    assert ttt == [(63, "chunk"), (64, "chunk")]
    for t, _ in probe_points("plain", mode_plan("plain", N, cfg), cfg, 8):
        assert 1 <= t < N - 1


def test_tap_sees_the_scored_distribution_and_changes_nothing():
    """SCORED_TAP (scoring/bpb.py) hands the auditor the full-vocabulary log-probabilities whose -logp[x_t]
    is exactly the NLL the scorer summed; with or without it the scores are bitwise equal."""
    model = perturbed_tiny_model().float()
    stream, luts_t = make_data(n=N)
    cfg = cfg_with()
    for mode in ("sliding", "slot"):
        plain = run_mode(model, cfg, DistEnv(), mode, stream, luts_t, autocast_dtype=None, warm_segments=2)
        tapped = run_mode(model, cfg, DistEnv(), mode, stream, luts_t, autocast_dtype=None, warm_segments=2,
                          capture=range(0, N - 1, 7))
        assert np.array_equal(plain.nll, tapped.nll) and plain.logp == {}
        assert sorted(tapped.logp) == list(range(0, N - 1, 7))
        for t, row in tapped.logp.items():
            assert row.shape == (cfg.model.vocab_size,) and abs(float(row.exp().sum()) - 1) < 1e-5
            assert -float(row[int(stream[t + 1])]) == tapped.nll[t]


def test_self_prediction_probe_catches_the_shared_slot_delta():
    """Planting the answer after t helps a batch-shared delta score x_t (positive advantage); the
    per-window delta scores x_t identically whatever follows it."""
    model = perturbed_tiny_model().float()
    stream, luts_t = make_data(n=N)
    light = ("score.slot.phase_iters=3", "score.slot.phase_history=5", "score.slot.phase_alpha=0")
    good = probe_mode(model, cfg_with(*light), DistEnv(), "slot", stream, luts_t, autocast_dtype=None,
                      run_warm_segments=2)
    assert good.ok and good.vacuous is None and len(good.self_prediction) == 2
    assert all(s["advantage_nats"] == 0.0 for s in good.self_prediction)
    bad = probe_mode(model, cfg_with(*light, "score.slot.coupling=shared"), DistEnv(), "slot", stream, luts_t,
                     autocast_dtype=None, run_warm_segments=2, stop_on_violation=False)
    assert not bad.ok
    window = next(s for s in bad.self_prediction if s["kind"] == "window")
    print("shared-delta self-prediction advantage", window["advantage_nats"])
    assert window["advantage_nats"] > 0.01 and window["nll_given"] < window["nll_true"]
    assert any(f["kind"] == "window" and f["changed"] > 0 for f in bad.flips)


def test_ledger_check_is_target_level():
    cfg = cfg_with()
    plan = mode_plan("ttt", N, cfg)  # 13 windows; chunk 0 = targets [0, 64) = windows 0-2
    first = plan.starts + plan.score_from
    chunk = (first >= 64).astype(np.int64) + (first >= 128)
    at = np.where(chunk == 0, 0, np.where(chunk == 1, 2, 4))  # score c0 @0, update @1, c1 @2, update @3, c2 @4
    ledger = {"window_scored_at": at, "update_clock": [1, 3], "update_lo": [0, 64], "update_hi": [64, 128]}
    problems, facts = ledger_problems(ledger, plan)
    assert problems == [] and facts["updates"] == 2 and facts["scoring_phases"] == 3
    early = dict(ledger, update_lo=[0, 64], update_hi=[64, 140])  # the second update reads chunk 2's target 128
    problems, _ = ledger_problems(early, plan)
    assert problems and "trained on target 128, scored only at @4" in problems[0]
    prequant = dict(ledger, window_scored_at=np.full(plan.num_windows, 1), update_clock=[0], update_lo=[0],
                    update_hi=[plan.n_targets])
    assert ledger_problems(prequant, plan)[0]


@pytest.mark.parametrize("target,env,ok", [
    ("8xH100 SXM", {"device": "cuda:0", "gpu": "NVIDIA H100 80GB HBM3", "world_size": 8}, True),
    ("8xH100 SXM", {"device": "cuda:0", "gpu": "NVIDIA H100 80GB HBM3", "world_size": 1}, False),
    ("8xH100 SXM", {"device": "cuda:0", "gpu": "NVIDIA H100 PCIe", "world_size": 8}, False),
    ("8xH100 SXM", {"device": "cuda:0", "gpu": "NVIDIA H200", "world_size": 8}, False),
    ("8xH100 SXM", {"device": "cpu", "cpu_count": 2, "world_size": 1}, False),
    ("2-core CPU", {"device": "cpu", "cpu_count": 2, "world_size": 1}, True),
    ("2-core CPU", {"device": "cpu", "cpu_count": 16, "world_size": 1}, False),
    ("any CPU", {"device": "cpu", "cpu_count": 16, "world_size": 1}, True),
    ("any CPU", None, False),
])
def test_hardware_matches_the_target(target, env, ok):
    assert hardware_matches(target, env) is ok


def test_describe_hardware_names_the_machine():
    assert describe_hardware(H100x8) == "8xNVIDIA H100 80GB HBM3"
    assert describe_hardware(CPU) == "cpu (2 cores)"
    assert describe_hardware(None) == "unknown hardware (no env.json)"


def fake_run(tmp_path, cfg, val=NO_VAL, **kw):
    """The audit context of a fake run directory (tests/helpers/audit.py) at tmp_path/run."""
    return fake_context(tmp_path / "run", cfg, val, **kw)


def test_coverage_summary_says_what_was_rescored():
    """PASS never reads like 'reproduces results.json for 0/1 modes' when the prefix is shorter than the
    scored stream: it says results.json was not re-scored, and on which prefix."""
    done = {"reproduction": "reproduced within 1e-05 relative", "prefix_tokens": 8192}
    short = {"reproduction": "not re-scored: the probe prefix (2,048) is shorter", "prefix_tokens": 2048}
    other = {"reproduction": "not compared: the run scored on another device type", "prefix_tokens": 8192}
    assert reproduction_summary({"sliding": done}, 8192) == "re-scored and reproduced results.json for 1 of 1 modes"
    assert reproduction_summary({"sliding": short}, 8192) == "results.json not re-scored (probe prefix 2,048 of 8,192 tokens)"
    assert reproduction_summary({"plain": done, "sliding": short}, 8192) == (
        "re-scored and reproduced results.json for 1 of 2 modes; "
        "results.json not re-scored for 1 of 2 modes (probe prefix 2,048 of 8,192 tokens)")
    assert "not compared with results.json" in reproduction_summary({"sliding": other}, 8192)


def test_budgets_bytes_from_disk_and_times_only_on_the_target(tmp_path):
    cfg = cfg_with("budget.target_hardware=8xH100 SXM")
    ok = check_budgets(fake_run(tmp_path, cfg, env=CPU))
    assert ok.status == "PASS" and ok.evidence["total_bytes"] == 6000 and ok.evidence["on_target"] is False
    assert "not the target hardware 8xH100 SXM" in ok.message
    slow_cpu = check_budgets(fake_run(tmp_path, cfg, train_s=700.0, env=CPU))
    assert slow_cpu.status == "PASS" and "train time 700.0s > 600s, but not measured on the target" in slow_cpu.message
    slow_h100 = check_budgets(fake_run(tmp_path, cfg, train_s=700.0, env=H100x8))
    assert slow_h100.status == "FAIL" and "train time 700.0s > 600s on the target hardware" in slow_h100.message
    big = check_budgets(fake_run(tmp_path, cfg_with("budget.artifact_bytes_limit=5999"), env=CPU))
    assert big.status == "FAIL" and "= 6,000 bytes > 5,999" in big.message
    raised = check_budgets(fake_run(tmp_path, cfg_with("budget.artifact_bytes_limit=99000000"), art_bytes=16_000_000,
                                    env=CPU))
    assert raised.status == "FAIL" and raised.evidence["limit_bytes"] == 16_000_000


def _layout(tmp_path, val_hashes, train_hashes):
    """root/manifest.json + doc_hashes.json + datasets/x/ with one val and one train shard (BOS = 1)."""
    ds = tmp_path / "root" / "datasets" / "fineweb10B_sp512"
    ds.mkdir(parents=True)
    val = np.concatenate([[1, 5, 6]] * len(val_hashes)).astype(np.uint16)
    shas = {"fineweb_val_000000.bin": {"sha256": write_shard(ds / "fineweb_val_000000.bin", val)},
            "fineweb_train_000000.bin": {"sha256": write_shard(ds / "fineweb_train_000000.bin",
                                                               np.array([1, 2, 3, 4], dtype=np.uint16))}}

    def digest(h):
        return hashlib.sha256("".join(h).encode()).hexdigest()

    (tmp_path / "root" / "doc_hashes.json").write_text(json.dumps({"val": val_hashes, "train": train_hashes}))
    (tmp_path / "root" / "manifest.json").write_text(json.dumps({
        "shards": shas, "docs_hashes_file": "doc_hashes.json", "val_docs_digest": digest(val_hashes),
        "train_docs_digest": digest(train_hashes)}))
    return ds, ValData(val, SimpleNamespace(bos_id=lambda: 1), None, len(val))


def test_data_check_reads_calibration_and_document_overlap(tmp_path):
    ds, val = _layout(tmp_path, ["a1", "b2"], ["c3", "d4", "e5"])
    cfg = cfg_with(f"data.path={ds}")
    reads = [{"file": str(ds / "fineweb_train_000000.bin"), "purpose": "train"},
             {"file": str(ds / "fineweb_val_000000.bin"), "purpose": "periodic_eval"}]
    good = check_data(fake_run(tmp_path, cfg, val, reads=reads, env=CPU))
    assert good.status == "PASS", good.message
    assert good.evidence["documents"]["overlap"] == 0 and good.evidence["shards"]["hashed"] == 2

    sneaky = reads + [{"file": str(ds / "fineweb_val_000000.bin"), "purpose": "train"}]
    r = check_data(fake_run(tmp_path, cfg, val, reads=sneaky, calib="val", env=CPU))
    assert r.status == "FAIL"
    assert "fineweb_val_000000.bin (train)" in r.message and "calibrated on 'val' data" in r.message
    assert "no reads.json" in check_data(fake_run(tmp_path, cfg, val, reads=None, env=CPU)).message


def test_data_check_document_overlap_and_missing_manifest(tmp_path):
    ds, val = _layout(tmp_path, ["a1", "b2"], ["b2", "e5"])
    cfg = cfg_with(f"data.path={ds}")
    reads = [{"file": str(ds / "fineweb_train_000000.bin"), "purpose": "train"}]
    r = check_data(fake_run(tmp_path, cfg, val, reads=reads, env=CPU))
    assert r.status == "FAIL" and "1 documents are in both train and val (e.g. b2)" in r.message
    (tmp_path / "root" / "manifest.json").unlink()
    s = check_data(fake_run(tmp_path, cfg, val, reads=reads, env=CPU))
    assert s.status == "SKIP" and s.message.startswith("SKIP (no manifest)")
