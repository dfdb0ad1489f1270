"""`pgolf eval` / `pgolf bench eval` end to end on a tiny trained run: every mode, --json, --save-nll, the
float-weights label, the artifact path (--run-dir with artifact.pgolf, and --artifact --data), the
NON-COMPLIANT label of the reference modes, usage errors. In-process (cli.main), one torch thread."""

import dataclasses
import json
import math
import shutil

import numpy as np
import pytest

from pgolf.config import SCORE_MODES
from pgolf.quant.artifact import save_model_artifact
from pgolf.quant.schemes import quantize_model
from pgolf.rundir import ARTIFACT, load_final_weights
from pgolf.runtime import DistEnv
from pgolf.tools.cli import main
from pgolf.tools.evaltool import FLOAT_WEIGHTS_LABEL
from pgolf.train.loop import Trainer
from tests.helpers.runs import tiny_cfg

MAX_TOKENS = "1201"  # 1,200 targets: T = 64, S = 16 -> 72 sliding windows, TTT chunks of 256 -> 5 chunks
ALL = ",".join(SCORE_MODES)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_data):
    d = tmp_path_factory.mktemp("evalrun")
    Trainer(tiny_cfg(tiny_data, "train.iterations=10", "train.val_every=0"), DistEnv(), d, progress=False,
            echo=False).run()
    return d


@pytest.fixture(scope="module")
def artifact_run(run_dir, tmp_path_factory):
    """A copy of the run with an RTN artifact.pgolf written beside its float weights."""
    from pgolf.rundir import load_config

    d = tmp_path_factory.mktemp("artrun") / "run"
    shutil.copytree(run_dir, d)
    cfg = load_config(d)
    model = load_final_weights(d, cfg, DistEnv().device)
    q = dataclasses.replace(cfg.quant, method="rtn")
    save_model_artifact(d / ARTIFACT, model, quantize_model(model, q), q)
    return d


def eval_json(capsys, *args):
    assert main(["eval", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_every_mode_json_and_saved_nll(capsys, run_dir, tmp_path):
    res = eval_json(capsys, "--run-dir", str(run_dir), "--mode", ALL, "--max-val-tokens", MAX_TOKENS,
                    "--save-nll", str(tmp_path / "nll.npy"))
    assert list(res) == list(SCORE_MODES)
    total = sum(r["seconds"] for r in res.values())
    for mode, r in res.items():
        assert r["targets"] == 1200 and r["bytes"] == res["plain"]["bytes"] > 0
        for k in ("val_loss", "val_bpb", "nats", "seconds", "windows_per_s"):
            assert math.isfinite(r[k]) and r[k] > 0, (mode, k)
        assert r["val_bpb"] == pytest.approx(r["val_loss"] * r["targets"] / r["bytes"] / math.log(2), rel=1e-12)
        assert 2.0 < r["val_bpb"] < 8.0
        assert r["compliant"] is True and "NON-COMPLIANT" not in r["label"]
        assert r["weights"] == FLOAT_WEIGHTS_LABEL  # no artifact in this run dir
        assert r["eval_seconds_total"] == pytest.approx(total) and r["eval_over_budget"] is False
        assert r["settings"]["seq_len"] == 64
        nll = np.load(r["nll_file"])
        assert r["nll_file"] == str(tmp_path / f"nll.{mode}.npy")
        assert nll.dtype == np.float64 and nll.shape == (1200,) and np.isfinite(nll).all()
        assert nll.sum() == pytest.approx(r["val_loss"] * r["targets"], rel=1e-9)
    assert res["slot"]["settings"]["slot"]["phase_iters"] == [2, 3] and "slot" in res["slot"]
    for mode in ("ttt", "ttt+slot"):
        assert res[mode]["audit"] == {"ok": True, "n_problems": 0, "problems": []}
        assert set(res[mode]["seconds_phases"]) == {"score", "train"} and res[mode]["ttt"]["chunks"] == 5
        assert "ledger" not in res[mode]
    assert res["plain"]["settings"]["stride"] == 64 and res["sliding"]["settings"]["stride"] == 16


def test_reference_modes_are_labelled_and_budget_reported(capsys, run_dir, tmp_path):
    sets = ["--set", "score.slot.coupling=shared", "--set", "score.ttt.mode=prequant"]
    common = ["--run-dir", str(run_dir), "--mode", "plain,slot,ttt", "--max-val-tokens", "601", *sets]
    res = eval_json(capsys, *common, "--set", "score.ttt.epochs=1")
    assert res["plain"]["compliant"] is True
    assert res["slot"]["compliant"] is False and res["slot"]["label"] == "NON-COMPLIANT (batch-shared SLOT delta)"
    assert res["ttt"]["compliant"] is False and res["ttt"]["label"].startswith("NON-COMPLIANT (pre-quant TTT")
    assert res["ttt"]["audit"]["ok"] is False and res["ttt"]["audit"]["n_problems"] > 0
    # text form: the label on the mode's line; a budget of 1 ms is reported as exceeded, not enforced
    assert main(["eval", *common, "--save-nll", str(tmp_path / "one.npy"), "--mode", "slot"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("slot val_loss:") and out[0].endswith(
        "[NON-COMPLIANT (batch-shared SLOT delta)] [float weights (not the artifact)]")
    assert f"nll_file:{tmp_path / 'one.npy'}" in out[0] and (tmp_path / "one.npy").is_file()  # one mode: FILE itself
    assert out[1].startswith("eval_time_total:")


def test_budget_warning(capsys, run_dir, monkeypatch):
    from pgolf.tools import stages as ev

    real = ev.evaluate

    def tight(model, cfg, *a, **kw):
        budget = dataclasses.replace(cfg.budget, eval_seconds_limit=1e-6)
        return real(model, dataclasses.replace(cfg, budget=budget), *a, **kw)

    monkeypatch.setattr(ev, "evaluate", tight)
    assert main(["eval", "--run-dir", str(run_dir), "--mode", "plain", "--max-val-tokens", "301", "--json"]) == 0
    cap = capsys.readouterr()
    res = json.loads(cap.out)
    assert res["plain"]["eval_over_budget"] is True and res["plain"]["eval_seconds_limit"] == 1e-6
    assert "WARNING: eval time" in cap.err and "exceeds budget.eval_seconds_limit=1e-06s" in cap.err


def test_artifact_paths_agree(capsys, artifact_run, tiny_data):
    a = eval_json(capsys, "--run-dir", str(artifact_run), "--mode", "plain,sliding", "--max-val-tokens", "601")
    assert a["plain"]["weights"] == f"artifact {artifact_run / ARTIFACT}"
    # --artifact + --data (a prepared root: the dataset and tokenizer are found from its layout)
    b = eval_json(capsys, "--artifact", str(artifact_run / ARTIFACT), "--data", str(tiny_data["root"]),
                  "--preset", "tiny", "--mode", "plain,sliding", "--max-val-tokens", "601")
    for mode in ("plain", "sliding"):
        for k in ("nats", "targets", "bytes", "val_bpb"):
            assert a[mode][k] == b[mode][k], (mode, k)
    # ... and with an explicit dataset dir + tokenizer
    c = eval_json(capsys, "--artifact", str(artifact_run / ARTIFACT), "--data", str(tiny_data["dataset_dir"]),
                  "--tokenizer", str(tiny_data["tokenizer"]), "--preset", "tiny", "--mode", "plain",
                  "--max-val-tokens", "601")
    assert c["plain"]["nats"] == a["plain"]["nats"]


@pytest.mark.parametrize("args, msg", [
    (["--set", "train.iterations=3"], "score.* and data.* keys only"),
    (["--mode", "plain,bogus"], "unknown mode"),
    (["--artifact", "x.pgolf"], "exactly one of --run-dir"),
    (["--preset", "tiny"], "--preset applies to --artifact only"),
])
def test_usage_errors(capsys, run_dir, args, msg):
    assert main(["eval", "--run-dir", str(run_dir), *args]) == 2
    assert msg in capsys.readouterr().err


def test_artifact_needs_data(capsys, artifact_run):
    assert main(["eval", "--artifact", str(artifact_run / ARTIFACT)]) == 2
    assert "--artifact needs --data" in capsys.readouterr().err


def test_bench_eval(capsys, run_dir):
    assert main(["bench", "eval", "--run-dir", str(run_dir), "--max-val-tokens", "401", "--mode", "sliding,slot",
                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res["modes"]) == {"sliding", "slot"} and res["modes"]["slot"]["windows_per_s"] > 0
    c = res["slot_phases"]
    assert c["single"]["phase_iters"] == [25] and c["cascaded"]["phase_iters"] == [5, 18]
    assert c["time_ratio"] == pytest.approx(c["cascaded"]["seconds"] / c["single"]["seconds"])
    assert math.isfinite(c["bpb_delta"]) and c["windows"] == res["modes"]["slot"]["windows"]
    assert main(["bench", "eval", "--run-dir", str(run_dir), "--max-val-tokens", "201", "--mode", "plain"]) == 0
    text = capsys.readouterr().out
    assert "cascaded/single time ratio" in text and "plain" in text
