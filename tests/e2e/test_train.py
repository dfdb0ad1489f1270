"""The trainer end to end on the tiny preset: logs, checkpoints, kill-and-resume, caps, errors."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from pgolf.runtime import DistEnv
from pgolf.train.loop import Trainer
from tests.helpers.runs import cli_sets, final_weights, run_cli, tiny_cfg


def test_tiny_training_writes_a_complete_run_dir(tmp_path, tiny_data):
    cfg = tiny_cfg(tiny_data, "train.iterations=30")
    res = Trainer(cfg, DistEnv(), tmp_path, progress=False, echo=False).run()
    assert res.steps == 30 and res.stopped_by == "iterations"
    log = (tmp_path / "log.txt").read_text()
    assert "model_params:101515" in log and "world_size:1 grad_accum_steps:1" in log
    assert "step:30/30 train_loss:" in log and "step_avg:" in log
    assert "step:10/30 val_loss:" in log and "final_ema step:30/30 val_loss:" in log
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in metrics if m["kind"] == "train"]
    vals = [m for m in metrics if m["kind"] == "val"]
    assert train[-1]["step"] == 30 and len(vals) == 4  # steps 10 and 20, final raw and final EMA
    assert train[-1]["train_loss"] < train[0]["train_loss"] - 0.8  # it learns: ln(512)=6.24 -> < 5.4
    assert vals[-1]["val_bpb"] < 4.5
    conf = json.loads((tmp_path / "config.json").read_text())
    assert conf["config"]["model"]["num_layers"] == 2 and len(conf["config_hash"]) == 64
    env = json.loads((tmp_path / "env.json").read_text())
    assert env["torch"] == torch.__version__ and env["attention"] == "sdpa"
    timings = json.loads((tmp_path / "timings.json").read_text())
    assert {"train", "compile_warmup", "periodic_val", "final_val"} <= set(timings)
    assert timings["train"] == pytest.approx(res.train_seconds)
    reads = json.loads((tmp_path / "reads.json").read_text())
    assert {r["purpose"] for r in reads} == {"train", "periodic_eval"}
    assert all("fineweb_val" in r["file"] for r in reads if r["purpose"] == "periodic_eval")
    assert all("fineweb_train" in r["file"] for r in reads if r["purpose"] == "train")
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["steps"] == 30 and summary["final_val"]["val_bpb"] == vals[-1]["val_bpb"]
    ck = torch.load(tmp_path / "ckpt" / "last.pt", weights_only=True)
    assert ck["step"] == 30 and ck["config_hash"] == conf["config_hash"]


def test_warmup_restores_state(tmp_path, tiny_data):
    """Warm-up steps are not training: the run equals one with no warm-up, bit for bit."""
    a = Trainer(tiny_cfg(tiny_data, "train.iterations=6", "train.warmup_steps=0"), DistEnv(), tmp_path / "a",
                progress=False, echo=False)
    b = Trainer(tiny_cfg(tiny_data, "train.iterations=6", "train.warmup_steps=3"), DistEnv(), tmp_path / "b",
                progress=False, echo=False)
    a.run()
    b.run()
    for (na, pa), (_, pb) in zip(a.raw_model.named_parameters(), b.raw_model.named_parameters()):
        assert torch.equal(pa, pb), na


def test_kill_and_resume_is_bit_identical(tmp_path, tiny_data):
    sets = cli_sets(tiny_data, "train.iterations=150", "train.checkpoint_every=10", "train.val_every=0")
    full = run_cli(["train", "--preset", "tiny", *sets, "--run-dir", str(tmp_path / "full"), "--no-progress"],
                   timeout=300)
    assert full.returncode == 0, full.stderr
    run = tmp_path / "killed"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGOLF_")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.Popen([sys.executable, "-m", "pgolf", "train", "--preset", "tiny", *sets, "--run-dir", str(run),
                             "--no-progress"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 240
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        log = run / "log.txt"
        if log.is_file() and "step:40/150" in log.read_text():
            proc.send_signal(signal.SIGKILL)
            killed_at = time.time()
            break
        time.sleep(0.01)
    proc.wait(timeout=60)
    assert killed_at is not None, "the run finished before it could be killed; make it longer"
    assert not (run / "model_final.pt").exists()
    ck = torch.load(run / "ckpt" / "last.pt", weights_only=True)
    assert 30 <= ck["step"] < 150
    res = run_cli(["train", "--resume", str(run), "--no-progress"], timeout=300)
    assert res.returncode == 0, res.stderr
    assert f"resumed_from_step:{ck['step']}" in (run / "log.txt").read_text()
    a, b = final_weights(tmp_path / "full"), final_weights(run)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_refuses_new_overrides(tmp_path, tiny_data):
    r = run_cli(["train", "--resume", str(tmp_path), "--set", "train.iterations=3"])
    assert r.returncode == 2 and "--resume continues a run with its own config.json" in r.stderr


def test_non_finite_loss_stops_with_clear_error_and_keeps_checkpoint(tmp_path, tiny_data):
    r = run_cli(["train", "--preset", "tiny", *cli_sets(tiny_data, "optim.scalar_lr=1e30", "optim.tied_embed_lr=1e30",
                                                         "optim.matrix_lr=1e30", "train.checkpoint_every=1",
                                                         "train.grad_clip_norm=0", "train.warmup_steps=0"),
                 "--run-dir", str(tmp_path), "--no-progress"], timeout=300)
    assert r.returncode == 1
    assert "non-finite training loss" in r.stderr and "Traceback" not in r.stderr
    ck = torch.load(tmp_path / "ckpt" / "last.pt", weights_only=True)
    bad_step = int(r.stderr.split("at or before step ")[1].split(";")[0])
    assert ck["step"] == bad_step - 1  # the last checkpoint is the last good step
    assert all(torch.isfinite(v).all() for v in ck["model"].values())


def test_wallclock_cap_stops_training(tmp_path, tiny_data):
    cfg = tiny_cfg(tiny_data, "train.iterations=100000", "train.max_wallclock_seconds=1.5", "train.val_every=0",
                   "train.log_every=1000")
    res = Trainer(cfg, DistEnv(), tmp_path, progress=False, echo=False).run()
    assert res.stopped_by == "wallclock_cap"
    assert 1.5 <= res.train_seconds < 1.5 + 1.0
    assert "stopping_early: wallclock_cap" in (tmp_path / "log.txt").read_text()
    lrs = [json.loads(x)["lr_mult"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()
           if '"train"' in x]
    assert lrs and lrs[0] <= 1.0


def test_eval_cli_scores_every_target(tmp_path, tiny_data):
    cfg = tiny_cfg(tiny_data, "train.iterations=10", "train.val_every=0")
    Trainer(cfg, DistEnv(), tmp_path, progress=False, echo=False).run()
    r = run_cli(["eval", "--run-dir", str(tmp_path), "--mode", "plain,sliding", "--max-val-tokens", "5001", "--json"],
                timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    from pgolf.data.shards import load_val_tokens
    from pgolf.data.tokenizer import build_byte_luts, load_tokenizer, target_bytes

    s = load_val_tokens(tiny_data["dataset_dir"])[:5001]
    want_bytes = int(target_bytes(build_byte_luts(load_tokenizer(tiny_data["tokenizer"]), 512), s[:-1], s[1:]).sum())
    for mode in ("plain", "sliding"):
        assert res[mode]["targets"] == 5000 and res[mode]["bytes"] == want_bytes
        assert res[mode]["compliant"] is True and 3.0 < res[mode]["val_bpb"] < 6.0
    bad = run_cli(["eval", "--run-dir", str(tmp_path), "--set", "train.iterations=3"])
    assert bad.returncode == 2 and "score.* and data.* keys only" in bad.stderr
