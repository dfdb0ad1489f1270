"""Same math at every world size: 2 gloo ranks x accumulation 1 == 1 rank x accumulation 2."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pgolf.presets import resolve
from pgolf.runtime import DistEnv
from pgolf.train.loop import Trainer
from tests.helpers.dist import spawn_gloo

pytestmark = pytest.mark.dist


def _cfg(data, accum):
    cfg, _ = resolve("tiny", [f"data.path={data['dataset_dir']}", f"data.tokenizer_path={data['tokenizer']}",
                              f"train.grad_accum={accum}", "train.val_every=0"], env={})
    return cfg


def _train_rank(env, data, run_dir, steps):
    torch.set_num_threads(1)
    tr = Trainer(_cfg(data, 1), env, run_dir, progress=False, echo=False)
    losses = []
    tr.setup()
    for _ in range(steps):
        losses.append(float(tr.train_step(1.0, 0.95)))
    return [p.detach().clone() for p in tr.raw_model.parameters()], losses


def test_two_ranks_accum1_equals_one_rank_accum2(tmp_path, tiny_data):
    data = {k: str(v) for k, v in tiny_data.items() if k in ("dataset_dir", "tokenizer")}
    steps = 4
    outs = spawn_gloo(2, _train_rank, data, str(tmp_path / "two"), steps, timeout=180)
    torch.set_num_threads(1)
    single = Trainer(_cfg(data, 2), DistEnv(), tmp_path / "one", progress=False, echo=False)
    single.setup()
    losses = [float(single.train_step(1.0, 0.95)) for _ in range(steps)]
    (p0, l0), (p1, l1) = outs
    assert l0 == l1  # both ranks report the all-reduced global mean
    for a, b in zip(l0, losses):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-6)
    for a, b, c in zip(p0, p1, single.raw_model.parameters()):
        assert torch.equal(a, b)  # replicas stay identical
        torch.testing.assert_close(a, c.detach(), rtol=1e-4, atol=1e-5)


def test_torchrun_two_processes_cpu(tmp_path, tiny_data):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    assert torchrun, "torchrun not found next to the interpreter"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGOLF_")}
    env["OMP_NUM_THREADS"] = "1"
    r = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "pgolf", "train", "--preset", "tiny",
                        "--set", f"data.path={tiny_data['dataset_dir']}",
                        "--set", f"data.tokenizer_path={tiny_data['tokenizer']}",
                        "--set", "train.iterations=6", "--run-dir", str(tmp_path / "run"), "--no-progress"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "world_size:2 grad_accum_steps:1" in log and "step:6/6 train_loss:" in log
    assert "final_ema step:6/6" in log
