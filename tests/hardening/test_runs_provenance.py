"""Stale results are never trusted (issue 13 item 2), and damaged run-directory JSON records are one error line.

Every stage's outputs record what they were made from (config hash, sha256 of model_final.pt and of the
artifact). A fresh `pgolf train` into a finished run removes the previous run's files; `pgolf quantize`
writing a different artifact removes the results and audit made from the old one; and eval, budget, audit
and `run --resume` refuse an artifact or results made from other weights than the run's model_final.pt with
one `pgolf: error:` line naming the file and what to rerun.

All CLI cases run in one child (`run_many`). HARDENING_CHILD_SRC (or HARDENING_LANDED_SRC)=/path/to/other/src
runs them against that source tree instead (one child per case), e.g. the landed tree, where they fail.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from tests.helpers.cli_fuzz import assert_one_error, run_bounded, run_many
from tests.helpers.runs import cli_sets

LANDED = os.environ.get("HARDENING_CHILD_SRC") or os.environ.get("HARDENING_LANDED_SRC")
CHILD = {"PYTHONPATH": LANDED} if LANDED else {}
SETS = ("train.iterations=3", "train.val_every=0", "train.warmup_steps=0", "train.val_max_tokens=512",
        "score.max_val_tokens=1024", "score.modes=plain")
DOWNSTREAM = ("artifact.pgolf", "quant_summary.json", "results.json")


def run_cases(cases: list[list]):
    if LANDED:
        return [run_bounded(c, env=CHILD) for c in cases]
    return run_many(cases, seconds_each=120)


def sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def sets(tmp_path_factory, tiny_data) -> list[str]:
    d = tmp_path_factory.mktemp("provdata")
    for name in ("fineweb_train_000000.bin", "fineweb_val_000000.bin"):
        shutil.copy(tiny_data["dataset_dir"] / name, d / name)
    return cli_sets({"dataset_dir": d, "tokenizer": tiny_data["tokenizer"]}, *SETS)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, sets) -> Path:
    """A finished `pgolf run` (trained, quantized, scored)."""
    d = tmp_path_factory.mktemp("provrun") / "A"
    r = run_bounded(["run", "--preset", "tiny", *sets, "--run-dir", d, "--code-bytes", "0", "--no-progress"],
                    env=CHILD, wall=300, cpu=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert all((d / n).is_file() for n in DOWNSTREAM)
    return d


def with_other_weights(src: Path, dst: Path) -> Path:
    """A copy of a finished run whose model_final.pt was replaced by other weights (its train_summary.json
    updated to match): its artifact, quant_summary.json and results.json were made from the old ones."""
    shutil.copytree(src, dst)
    sd = torch.load(dst / "model_final.pt", weights_only=True)
    first = next(iter(sd))
    sd[first] = sd[first] + 0.01
    buf = io.BytesIO()
    torch.save(sd, buf)
    (dst / "model_final.pt").write_bytes(buf.getvalue())
    ts = json.loads((dst / "train_summary.json").read_text())
    if "weights_sha256" in ts:
        ts["weights_sha256"] = sha256(dst / "model_final.pt")
        (dst / "train_summary.json").write_text(json.dumps(ts))
    return dst


@pytest.fixture(scope="module")
def probes(finished, sets, tmp_path_factory):
    """Every scenario's run directory and the CLI answers, in one child: {name: (dir, result)}."""
    root = tmp_path_factory.mktemp("provcases")
    retrained = root / "retrained"
    shutil.copytree(finished, retrained)
    requant = root / "requant"
    shutil.copytree(finished, requant)
    (requant / "audit.json").write_text(json.dumps({"status": "PASS", "checks": []}))
    mixed = with_other_weights(finished, root / "mixed")
    bad = {}
    for name, file, text in (("timings", "timings.json", "[1, 2]"), ("env", "env.json", "[]"),
                             ("results", "results.json", None), ("quant", "quant_summary.json", "{}"),
                             ("summary", "train_summary.json", '{"steps": 3')):
        d = root / f"bad_{name}"
        shutil.copytree(finished, d)
        if text is None:  # results.json with a string where a number belongs
            rec = json.loads((d / file).read_text())
            rec["steps"] = "three"
            text = json.dumps(rec)
        (d / file).write_text(text)
        bad[name] = d
    plain = ["--mode", "plain", "--max-val-tokens", "256"]
    cases = {
        "fresh train": (retrained, ["train", "--preset", "tiny", *sets, "--seed", "7", "--run-dir", retrained,
                                    "--no-progress"]),
        "eval after fresh train": (retrained, ["eval", "--run-dir", retrained, *plain]),
        "budget after fresh train": (retrained, ["budget", "--run-dir", retrained, "--code-bytes", "0"]),
        "requantize": (requant, ["quantize", "--run-dir", requant, "--code-bytes", "0", "--set", "quant.method=rtn"]),
        "audit after requantize": (requant, ["audit", requant, "--checks", "budgets"]),
        "eval of other weights": (mixed, ["eval", "--run-dir", mixed, *plain]),
        "budget of other weights": (mixed, ["budget", "--run-dir", mixed, "--code-bytes", "0"]),
        "audit of other weights": (mixed, ["audit", mixed, "--checks", "budgets"]),
        "run --resume of other weights": (mixed, ["run", "--preset", "tiny", *sets, "--run-dir", mixed, "--resume",
                                                  "--code-bytes", "0", "--no-progress"]),
        "timings.json a list": (bad["timings"], ["quantize", "--run-dir", bad["timings"], "--code-bytes", "0"]),
        "env.json a list": (bad["env"], ["train", "--resume", bad["env"], "--no-progress"]),
        "results.json steps a string": (bad["results"], ["audit", bad["results"], "--checks", "budgets"]),
        "quant_summary.json empty": (bad["quant"], ["audit", bad["quant"], "--checks", "budgets"]),
        "train_summary.json torn": (bad["summary"], ["quantize", "--run-dir", bad["summary"], "--code-bytes", "0"]),
    }
    res = run_cases([args for _, args in cases.values()])
    return {name: (d, r) for (name, (d, _)), r in zip(cases.items(), res)}


def test_a_fresh_train_removes_the_previous_runs_outputs(probes, finished):
    d, r = probes["fresh train"]
    assert r.returncode == 0, r.stderr[-2000:]
    left = [n for n in (*DOWNSTREAM, "audit.json") if (d / n).exists()]
    assert left == [], f"{left} of the previous run kept beside the new weights"
    said = [x for x in (d / "log.txt").read_text().splitlines() if x.startswith("removed ")]
    assert len(said) == 1 and all(n in said[0] for n in (*DOWNSTREAM, "model_final.pt")), said
    timings = json.loads((d / "timings.json").read_text())
    assert not {"score", "serialize", "quantize", "gptq"} & set(timings), timings  # no phase of the old run
    # the metrics are this run's alone: as many records as the previous run wrote
    assert len((d / "metrics.jsonl").read_text().splitlines()) == len(
        (finished / "metrics.jsonl").read_text().splitlines())
    e = probes["eval after fresh train"][1]  # no artifact left: the float weights, labelled as such
    assert e.returncode == 0 and "WARNING: no artifact" in e.stderr, e.stderr[-2000:]
    assert_one_error(probes["budget after fresh train"][1], str(d / "artifact.pgolf"))


def test_a_new_artifact_removes_the_results_and_audit_of_the_old_one(probes):
    d, r = probes["requantize"]
    assert r.returncode == 0, r.stderr[-2000:]
    assert not (d / "results.json").exists() and not (d / "audit.json").exists()
    assert "removed results.json, audit.json" in (d / "log.txt").read_text()
    assert_one_error(probes["audit after requantize"][1], str(d / "results.json"))


@pytest.mark.parametrize("case, file, rerun", [
    ("eval of other weights", "artifact.pgolf", "pgolf quantize"),
    ("budget of other weights", "artifact.pgolf", "pgolf quantize"),
    ("audit of other weights", "results.json", "pgolf run --resume"),
    ("run --resume of other weights", "results.json", "pgolf run --resume"),
])
def test_outputs_of_other_weights_are_refused(probes, case, file, rerun):
    d, r = probes[case]
    line = assert_one_error(r, str(d / file), "stale", rerun)
    assert "model_final.pt" in line


@pytest.mark.parametrize("case, file", [
    ("timings.json a list", "timings.json"), ("env.json a list", "env.json"),
    ("results.json steps a string", "results.json"), ("quant_summary.json empty", "quant_summary.json"),
    ("train_summary.json torn", "train_summary.json"),
])
def test_damaged_json_records_are_one_error_line(probes, case, file):
    d, r = probes[case]
    assert_one_error(r, str(d / file))
