"""precision=auto: bf16 autocast only where this CPU runs bf16 matmuls fast, decided once and recorded.

Both machine classes are emulated by replacing the measurement (`runtime.probe_cpu_bf16`): a CPU with
AMX units (bf16 several times faster) and one without (bf16 emulated, ~0.05-0.3x fp32)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pgolf import runtime
from pgolf.presets import resolve
from pgolf.runtime import BF16_MIN_SPEEDUP, BF16Probe, DistEnv, Precision, choose_precision
from pgolf.scoring.evaluate import EvalData, evaluate
from pgolf.train.loop import Trainer
from tests.helpers.dist import spawn_gloo
from tests.helpers.models import make_data, perturbed_tiny_model
from tests.helpers.runs import tiny_cfg

CPU = torch.device("cpu")
AMX = BF16Probe(fp32_gflops=100.0, bf16_gflops=420.0, seconds=0.1, cpu_flags=("amx_bf16", "amx_tile"))
AVX2 = BF16Probe(fp32_gflops=100.0, bf16_gflops=5.0, seconds=0.1, cpu_flags=())


def fake_probe(monkeypatch, probe: BF16Probe) -> None:
    monkeypatch.setattr(runtime, "probe_cpu_bf16", lambda: probe)


def test_auto_picks_bf16_only_where_bf16_is_fast(monkeypatch):
    fake_probe(monkeypatch, AMX)
    p = choose_precision("auto", CPU)
    assert p.dtype is torch.bfloat16 and p.name == "bf16-autocast" and "4.20x fp32" in p.reason
    assert "amx_bf16" in p.reason
    fake_probe(monkeypatch, AVX2)
    p = choose_precision("auto", CPU)
    assert p.dtype is None and p.name == "fp32" and "0.05x fp32" in p.reason and "no amx_bf16" in p.reason
    # a probe disturbed by other load measures both dtypes at the same contended speed (seen: 1.00x on an
    # AMX machine): the AMX flag still decides bf16; without it the measurement decides (fp32)
    fake_probe(monkeypatch, BF16Probe(50.0, 50.0, 0.2, ("amx_bf16",)))
    p = choose_precision("auto", CPU)
    assert p.dtype is torch.bfloat16 and "1.00x fp32" in p.reason and "AMX bf16 units decide" in p.reason
    fake_probe(monkeypatch, BF16Probe(50.0, 50.0, 0.2, ("avx512_bf16",)))
    assert choose_precision("auto", CPU).dtype is None
    edge = BF16Probe(100.0, 100.0 * BF16_MIN_SPEEDUP, 0.1, ())
    fake_probe(monkeypatch, edge)
    assert choose_precision("auto", CPU).dtype is torch.bfloat16  # the threshold is inclusive
    # explicit requests are never measured
    monkeypatch.setattr(runtime, "probe_cpu_bf16", lambda: pytest.fail("measured an explicit request"))
    assert choose_precision("bf16", CPU).dtype is torch.bfloat16 and choose_precision("fp32", CPU).dtype is None
    assert choose_precision("auto", torch.device("cuda")).dtype is torch.bfloat16  # no probe on CUDA
    with pytest.raises(ValueError, match="precision must be"):
        choose_precision("fp16", CPU)


def test_the_real_probe_measures_both_dtypes():
    p = runtime.probe_cpu_bf16()
    assert p.fp32_gflops > 0 and p.bf16_gflops > 0 and 0 < p.seconds < 30
    assert runtime.probe_cpu_bf16() is p  # measured once per process
    assert set(p.cpu_flags) <= {"amx_bf16", "amx_tile", "avx512_bf16"}


def test_precision_round_trips_through_its_record():
    p = Precision(torch.bfloat16, "auto", "auto: measured")
    back = Precision.from_json(json.loads(json.dumps(p.to_json())))
    assert back.dtype is torch.bfloat16 and back.requested == "auto" and "measured" in back.reason


def test_training_records_its_decision_and_a_resume_keeps_it(monkeypatch, tmp_path, tiny_data):
    cfg = tiny_cfg(tiny_data, "train.precision=auto", "train.iterations=4", "train.val_every=0",
                   "train.checkpoint_every=2", "train.warmup_steps=0")
    fake_probe(monkeypatch, AVX2)
    Trainer(cfg, DistEnv(), tmp_path, progress=False, echo=False).run(stop_after=2)
    env = json.loads((tmp_path / "env.json").read_text())
    assert env["train_precision"]["precision"] == "fp32" and env["train_precision"]["requested"] == "auto"
    assert "precision:fp32 (auto: bf16 matmul 0.05x fp32" in (tmp_path / "log.txt").read_text()
    fake_probe(monkeypatch, AMX)  # the machine now says bf16 is fast: the resumed run must not switch
    tr = Trainer(cfg, DistEnv(), tmp_path, resume=True, progress=False, echo=False)
    tr.run()
    assert tr.amp_dtype is None and tr.precision.reason.startswith("as recorded")
    assert "resumed_from_step:2" in (tmp_path / "log.txt").read_text()


def _rank_decision(env, _):
    runtime.probe_cpu_bf16 = (lambda: AMX) if env.rank == 0 else (lambda: AVX2)
    cfg, _ = resolve("tiny", ["train.precision=auto", "score.precision=auto"], env={})
    return runtime.train_precision(cfg, env).name, runtime.score_precision(cfg, env).name


@pytest.mark.dist
def test_ranks_compute_in_rank_zeros_precision():
    outs = spawn_gloo(2, _rank_decision, None, timeout=120)
    assert outs == [("bf16-autocast", "bf16-autocast")] * 2


def test_bf16_and_fp32_scoring_of_the_same_weights_agree_closely():
    """The precision is recorded because it changes the score a little: on the tiny model, bf16 autocast
    scoring moves the sliding BPB by well under 1% relative (bf16 logits, fp32 softmax)."""
    stream, luts_t = make_data(n=600)
    model = perturbed_tiny_model().float()
    cfg, _ = resolve("tiny", ["score.seq_len=48", "score.sliding.stride=16"], env={})
    data = EvalData(np.asarray(stream), luts_t)
    res = {name: evaluate(model, cfg, DistEnv(), modes=("sliding",), data=data, autocast_dtype=dt)["sliding"]
           for name, dt in (("fp32", None), ("bf16", torch.bfloat16))}
    assert res["fp32"]["precision"] == "fp32" and res["bf16"]["precision"] == "bf16-autocast"
    rel = abs(res["bf16"]["val_bpb"] - res["fp32"]["val_bpb"]) / res["fp32"]["val_bpb"]
    assert 0 < rel < 0.01
