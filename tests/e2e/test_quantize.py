"""Quantization of a trained tiny run end to end: `quantize_run`, the pipeline, `pgolf quantize`/`budget`/`run`."""

import json
from pathlib import Path

import pytest
import torch

from pgolf.quant.artifact import dequantized_copy, load_artifact
from pgolf.quant.container import read_artifact
from pgolf.quant.stage import QuantizeError, quantize_run
from pgolf.rundir import ARTIFACT, HESSIANS, load_config, load_final_weights
from pgolf.runtime import DistEnv
from pgolf.scoring.evaluate import evaluate
from pgolf.train.loop import Trainer
from tests.helpers.runs import cli_sets, run_cli, tiny_cfg

MAX_VAL = 4096


@pytest.fixture(scope="module")
def tiny_run(tiny_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("qrun")
    cfg = tiny_cfg(tiny_data, "train.iterations=25", "train.val_every=0")
    Trainer(cfg, DistEnv(), run, progress=False, echo=False).run()
    return run


def test_quantize_run_writes_a_verified_artifact_and_summary(tiny_run):
    s = quantize_run(tiny_run, DistEnv(), code_bytes=12_345, progress=False, echo=False)
    path = tiny_run / ARTIFACT
    assert s["artifact_bytes"] == path.stat().st_size and s["total_bytes"] == s["artifact_bytes"] + 12_345
    assert s["within_limit"] and s["compressor"] in s["compressed_sizes"]
    assert s["compressed_sizes"][s["compressor"]] == min(s["compressed_sizes"].values())
    assert s["calibration"]["source"] == "selfgen" and s["calibration"]["seqs"] == 4
    assert s["pruning"]["pruned"] == 0 and s["pruning"]["candidates"] > 0
    assert 0.8 < s["payload_over_entropy"] < 1.1
    manifest, tensors = read_artifact(path)
    assert manifest["extra"]["code_bytes"] == 12_345
    assert {t["scheme"] for t in manifest["tensors"] if t["role"] == "matrix"} == {"gptq_int6"}
    assert json.loads((tiny_run / "quant_summary.json").read_text())["artifact_bytes"] == s["artifact_bytes"]
    assert "Total submission size: code 12,345 + model" in (tiny_run / "log.txt").read_text()


def test_scoring_the_reloaded_artifact_equals_the_in_memory_quantized_model(tiny_run):
    """What is scored is what ships: the BPB of load_artifact(file) equals the in-memory dequantized twin."""
    quantize_run(tiny_run, DistEnv(), progress=False, echo=False)
    cfg = load_config(tiny_run)
    _, tensors = read_artifact(tiny_run / ARTIFACT)
    float_model = load_final_weights(tiny_run, cfg, torch.device("cpu")).float()
    in_memory = dequantized_copy(float_model, tensors).eval()
    from_disk = load_artifact(tiny_run / ARTIFACT)
    a = evaluate(in_memory, cfg, DistEnv(), modes=("plain", "sliding"), max_val_tokens=MAX_VAL)
    b = evaluate(from_disk, cfg, DistEnv(), modes=("plain", "sliding"), max_val_tokens=MAX_VAL)
    for m in ("plain", "sliding"):
        assert a[m]["val_bpb"] == b[m]["val_bpb"] and a[m]["val_loss"] == b[m]["val_loss"]
    f = evaluate(float_model, cfg, DistEnv(), modes=("plain",), max_val_tokens=MAX_VAL)
    assert abs(f["plain"]["val_bpb"] - a["plain"]["val_bpb"]) < 0.05  # quantized, but close to float


def test_pruning_reaches_a_target_below_the_unpruned_size(tiny_run):
    from dataclasses import replace

    cfg = load_config(tiny_run)
    cfg = replace(cfg, quant=replace(cfg.quant, compressor="lzma"))
    full = quantize_run(tiny_run, DistEnv(), progress=False, echo=False, cfg=cfg)["total_bytes"]
    target = full - 300
    cfg2 = replace(cfg, quant=replace(cfg.quant, prune_target_bytes=target))
    s = quantize_run(tiny_run, DistEnv(), progress=False, echo=False, cfg=cfg2)
    assert s["pruning"]["pruned"] > 0 and s["pruning"]["within_target"]
    assert s["total_bytes"] <= target
    _, tensors = read_artifact(tiny_run / ARTIFACT)
    assert sum(int((t[1] == 0).sum()) for t in tensors.values() if t[0] == "gptq_int6") >= s["pruning"]["pruned"]


def test_over_budget_is_reported_and_refused(tiny_run):
    from dataclasses import replace

    cfg = load_config(tiny_run)
    cfg2 = replace(cfg, budget=replace(cfg.budget, artifact_bytes_limit=1000),
                   quant=replace(cfg.quant, prune_target_bytes=900, compressor="lzma"))
    s = quantize_run(tiny_run, DistEnv(), progress=False, echo=False, cfg=cfg2)
    assert not s["within_limit"] and not s["pruning"]["within_target"]
    assert s["pruning"]["pruned"] == s["pruning"]["candidates"]  # pruned everything, still too big
    assert "OVER BUDGET: NOT A VALID SUBMISSION" in (tiny_run / "log.txt").read_text()


def test_train_calibration_runs_inside_the_reserved_wallclock(tiny_data, tmp_path):
    cfg = tiny_cfg(tiny_data, "train.iterations=100000", "train.max_wallclock_seconds=4", "train.val_every=0",
                   "quant.calib_source=train", "quant.calib_reserve_seconds=2")
    res = Trainer(cfg, DistEnv(), tmp_path, progress=False, echo=False).run()
    assert res.stopped_by == "wallclock_cap"
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    # the cap was shortened by the reserve: stopped after the step crossing 2 s, long before 4 s (a loaded
    # machine can stretch one step, hence no tighter bound)
    assert 2.0 <= summary["train_seconds"] < 4.0
    assert summary["charged_seconds"] == pytest.approx(summary["train_seconds"] + summary["calib_seconds"])
    assert (tmp_path / HESSIANS).is_file()
    log = (tmp_path / "log.txt").read_text()
    assert "calibration_reserve:2.0s training_cap:2.0s" in log and "calibration: 4 training sequences" in log
    assert "tok_emb" in torch.load(tmp_path / HESSIANS, weights_only=True)  # the tied head's Hessian too
    s = quantize_run(tmp_path, DistEnv(), progress=False, echo=False)
    assert s["calibration"]["source"] == "train"
    _, tensors = read_artifact(tmp_path / ARTIFACT)
    assert tensors["tok_emb"][0] == "gptq_int8" and tensors["bigram.table"][0] == "pctl_int8"
    (tmp_path / HESSIANS).unlink()
    with pytest.raises(QuantizeError, match="calib_source=train needs hessians.pt"):
        quantize_run(tmp_path, DistEnv(), progress=False, echo=False)


def test_cli_quantize_budget_and_eval_from_the_artifact(tiny_run):
    r = run_cli(["quantize", "--run-dir", str(tiny_run), "--code-bytes", "5000", "--json"])
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    r = run_cli(["budget", "--run-dir", str(tiny_run), "--code-bytes", "5000"])
    assert r.returncode == 0, r.stderr
    assert f"= {s['artifact_bytes'] + 5000:,} bytes" in r.stdout and "valid" in r.stdout
    r = run_cli(["budget", "--run-dir", str(tiny_run), "--code-bytes", "15999000"])
    assert r.returncode == 1 and "INVALID: over the limit" in r.stdout
    data = bytearray((tiny_run / ARTIFACT).read_bytes())
    data[len(data) // 2] ^= 0x10
    bad = Path(tiny_run) / "bad"
    bad.mkdir(exist_ok=True)
    for name in ("config.json",):
        (bad / name).write_bytes((tiny_run / name).read_bytes())
    (bad / ARTIFACT).write_bytes(bytes(data))
    r = run_cli(["budget", "--run-dir", str(bad), "--code-bytes", "0"])
    assert r.returncode == 1 and "checksum mismatch" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_pipeline_run_record_scores_the_artifact(tiny_data, tmp_path):
    from pgolf.pipeline import run_record

    cfg = tiny_cfg(tiny_data, "train.iterations=10", "train.val_every=0", "score.modes=plain",
                   f"score.max_val_tokens={MAX_VAL}")
    res = run_record(cfg, DistEnv(), tmp_path, code_bytes=777, progress=False, echo=False)
    assert res["code_bytes"] == 777 and res["total_bytes"] == res["artifact_bytes"] + 777
    r = res["modes"]["plain"]
    m = load_artifact(tmp_path / ARTIFACT)
    again = evaluate(m, cfg, DistEnv(), modes=("plain",), max_val_tokens=MAX_VAL)["plain"]
    assert again["val_bpb"] == r["val_bpb"]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["modes"]["plain"]["val_bpb"] == r["val_bpb"]
    assert not saved["compliant"] and "not a challenge score" in r["partial"]  # a prefix is never a result
    assert f"final_plain val_loss:{r['val_loss']:.8f} val_bpb:{r['val_bpb']:.8f}" in (tmp_path / "log.txt").read_text()
    timings = json.loads((tmp_path / "timings.json").read_text())
    assert {"train", "gptq", "serialize", "score", "hessians", "calib_generate"} <= set(timings)


def test_run_record_resume_skips_finished_stages(tiny_data, tmp_path):
    from pgolf.pipeline import run_record

    cfg = tiny_cfg(tiny_data, "train.iterations=6", "train.val_every=0", "score.modes=plain",
                   f"score.max_val_tokens={MAX_VAL}")
    first = run_record(cfg, DistEnv(), tmp_path, progress=False, echo=False, resume=True)
    assert run_record(cfg, DistEnv(), tmp_path, progress=False, echo=False, resume=True) == first
    (tmp_path / "results.json").unlink()
    art = (tmp_path / ARTIFACT).read_bytes()
    again = run_record(cfg, DistEnv(), tmp_path, progress=False, echo=False, resume=True)
    log = (tmp_path / "log.txt").read_text()
    assert log.count("train_done") == 1 and log.count("Total submission size") == 1  # neither redone
    assert (tmp_path / ARTIFACT).read_bytes() == art
    assert again["modes"]["plain"]["val_bpb"] == first["modes"]["plain"]["val_bpb"]
    other = tiny_cfg(tiny_data, "train.iterations=7", "train.val_every=0", "score.modes=plain",
                     f"score.max_val_tokens={MAX_VAL}")
    from pgolf.rundir import Run

    assert not Run(tmp_path).stage_done(other, "results.json")  # another config never reuses a stage


def test_cli_run_seeds_refuses_run_dir(tiny_data, tmp_path):
    r = run_cli(["run", "--preset", "tiny", *cli_sets(tiny_data), "--seeds", "1,2", "--run-dir", str(tmp_path)])
    assert r.returncode == 2 and "--seeds writes one run directory per seed" in r.stderr
