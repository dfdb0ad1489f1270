"""`pgolf audit` on real tiny runs (train -> quantize -> score via `pipeline.run_record`): every compliant
mode PASSES every check; each reference mode FAILS (causality, ledger, reference); an over-budget artifact
FAILS; a validation shard edited after scoring FAILS coverage (the re-scored stream no longer reproduces
results.json) and data (sha256 against the manifest), and without a manifest the data check SKIPs.

The data is prepared from the embedded corpus with three short validation documents, so the whole
validation stream (~480 tokens) is scored: a complete run, no score.max_val_tokens prefix."""

import argparse
import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pgolf.data.shards import list_shards, open_shard, write_shard
from pgolf.pipeline import run_record
from pgolf.presets import resolve
from pgolf.rundir import ARTIFACT
from pgolf.runtime import DistEnv
from pgolf.tools.audit import CHECKS, add_audit_parser, audit, format_table

COMPLIANT = ("plain", "sliding", "slot", "ttt", "ttt+slot")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    """Prepared data: 3 validation documents cut to 330 characters (~480 tokens), 120 training documents."""
    from pgolf.tools.data.docs import iter_docs
    from pgolf.tools.data.prepare import prepare

    tmp = tmp_path_factory.mktemp("auditdata")
    docs = list(itertools.islice(iter_docs(["default"]), 263))
    src = tmp / "docs.jsonl"
    with src.open("w", encoding="utf-8") as fh:
        for text in [d[:330] for d in docs[:3]] + docs[143:]:
            fh.write(json.dumps({"text": text}) + "\n")
    root = tmp / "data"
    m = prepare([src], root, val_docs=3, vocab_size=512, shard_tokens=100_000, progress=False, log=lambda *a: None)
    return root, m


def sets_for(root: Path, m: dict, *extra: str) -> list[str]:
    return [f"data.path={root / m['dataset_path']}", f"data.tokenizer_path={root / m['tokenizer_path']}",
            "train.iterations=3", "train.warmup_steps=0", "train.val_every=0", "quant.calib_seqs=2",
            "quant.calib_seq_len=16", "score.ttt.chunk_tokens=128", *extra]


def make_run(run_dir: Path, small_data, *extra: str) -> Path:
    """run_record on one torch thread (module fixtures are set up before the function-scoped one_thread)."""
    root, m = small_data
    cfg, _ = resolve("tiny", sets_for(root, m, *extra), env={})
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_record(cfg, DistEnv(), run_dir, progress=False, echo=False)
    finally:
        torch.set_num_threads(n)
    return run_dir


@pytest.fixture(scope="module")
def compliant_run(small_data, tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("compliant"), small_data, f"score.modes={','.join(COMPLIANT)}")


def statuses(report: dict) -> dict[str, str]:
    return {c["name"]: c["status"] for c in report["checks"]}


def check(report: dict, name: str) -> dict:
    return next(c for c in report["checks"] if c["name"] == name)


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("ckpt", "model_final.pt", "audit.json"))
    return dst


def edit_config(run: Path, fn) -> None:
    p = run / "config.json"
    d = json.loads(p.read_text())
    fn(d["config"])
    p.write_text(json.dumps(d, indent=2))


def test_every_compliant_mode_passes_every_check(compliant_run):
    report = audit(compliant_run)
    print(format_table(report))
    assert statuses(report) == dict.fromkeys(CHECKS, "PASS"), format_table(report)
    assert json.loads((compliant_run / "audit.json").read_text())["status"] == "PASS"
    causal = check(report, "causality")["evidence"]
    assert set(causal) == set(COMPLIANT)
    for mode, e in causal.items():
        assert e["ok"] and e["vacuous"] is None and e["tolerance_nats"] == 0.0
        assert e["prefix_tokens"] == report["probe_prefix_tokens"][mode] > 400  # the whole scored stream
        kinds = {f["kind"] for f in e["flips"]}
        assert {"window", "inside", "end"} <= kinds and ("batch" in kinds or mode == "plain"), (mode, kinds)
        assert ("chunk" in kinds) == (mode in ("ttt", "ttt+slot")) and ("segment" in kinds) == (mode == "slot")
        assert all(f["changed"] == 0 and f["own_distribution_max_abs_change"] == 0.0 for f in e["flips"])
        assert len(e["self_prediction"]) == 2
        assert all(s["advantage_nats"] == 0.0 and s["nll_given"] == s["nll_true"] for s in e["self_prediction"])
    assert causal["slot"]["warm_segments"] >= 1 and causal["slot"]["baseline"]["val_loss"] > 0
    cov = check(report, "coverage")["evidence"]
    assert cov["lut_bytes"] == cov["text_bytes"] and cov["scored_tokens"] == cov["val_tokens"]
    assert all(e["reproduction"].startswith("reproduced") for e in cov["modes"].values())
    assert check(report, "coverage")["message"].endswith(
        f"re-scored and reproduced results.json for {len(COMPLIANT)} of {len(COMPLIANT)} modes")
    led = check(report, "ledger")["evidence"]
    assert led["ttt"]["updates"] > 0 and led["ttt+slot"]["updates"] > 0
    bud = check(report, "budgets")["evidence"]
    assert bud["artifact_bytes_on_disk"] == (compliant_run / ARTIFACT).stat().st_size
    assert bud["on_target"] is True and bud["measured_on"].startswith("cpu")
    data = check(report, "data")["evidence"]
    assert data["documents"]["overlap"] == 0 and data["shards"]["mismatched"] == []
    assert data["calibration"]["quant_summary"]["source"] == "selfgen"


@pytest.mark.parametrize("mode,setting", [("slot", "score.slot.coupling=shared"), ("ttt", "score.ttt.mode=prequant")])
def test_each_reference_mode_fails(small_data, tmp_path, mode, setting):
    run = make_run(tmp_path / "run", small_data, f"score.modes={mode}", setting)
    report = audit(run, checks=("causality", "ledger", "reference"))
    st = statuses(report)
    assert report["status"] == "FAIL" and st["causality"] == "FAIL" and st["reference"] == "FAIL"
    assert st["ledger"] == ("FAIL" if mode == "ttt" else "SKIP")
    msg = check(report, "causality")["message"]
    assert msg.startswith(f"{mode}: changing stream[")
    assert setting.split("=")[0] in check(report, "reference")["message"]
    e = check(report, "causality")["evidence"][mode]
    assert not e["ok"] and e["problems"]
    if mode == "ttt":  # the prequant weights saw every target: the first flip already moves target 0
        assert e["flips"][0]["first_changed"] == 0
        assert "scored only at" in check(report, "ledger")["message"] or "own ledger" in check(report, "ledger")["message"]


LORA = ("score.lora.docs_per_batch=1", "score.lora.chunk_tokens=16", "score.lora.rank=2", "score.lora.lr=0.05")


def test_document_modes_with_lora_phases_pass_every_check(small_data, tmp_path):
    """doc and lora (two global phases, one document per batch) on the three validation documents."""
    run = make_run(tmp_path / "run", small_data, "score.modes=doc,lora", *LORA, "score.lora.phase_docs=1,2",
                   "score.lora.phase_lr=0.01")
    report = audit(run)
    assert statuses(report) == dict.fromkeys(CHECKS, "PASS"), format_table(report)
    causal = check(report, "causality")["evidence"]
    kinds = {m: {f["kind"] for f in e["flips"]} for m, e in causal.items()}
    assert "document" in kinds["doc"] and {"document", "chunk", "batch"} <= kinds["lora"], kinds
    assert all(f["changed"] == 0 for e in causal.values() for f in e["flips"])
    led = check(report, "ledger")["evidence"]["lora"]
    assert led["updates"] > 0 and led["phases"] == 2 and led["problems"] == [] and led["documents"] == 3
    r = json.loads((run / "results.json").read_text())["modes"]["lora"]
    assert r["audit"]["ok"] and [p["after_docs"] for p in r["lora"]["phases"]] == [1, 2]


def test_lora_update_first_reference_fails(small_data, tmp_path):
    run = make_run(tmp_path / "run", small_data, "score.modes=lora", *LORA, "score.lora.order=update_first")
    report = audit(run, checks=("causality", "ledger", "reference"))
    assert statuses(report) == {"causality": "FAIL", "ledger": "FAIL", "reference": "FAIL"}, format_table(report)
    assert "score.lora.order=update_first" in check(report, "reference")["message"]
    assert "not all scored before it" in check(report, "ledger")["message"] or \
        "own ledger audit failed" in check(report, "ledger")["message"]


def test_over_budget_artifact_fails(compliant_run, tmp_path):
    """The verdict is recomputed from the file on disk: a JSON claiming a small artifact does not help."""
    run = copy_run(compliant_run, tmp_path / "run")
    size = (run / ARTIFACT).stat().st_size

    def small_limit(c):
        c["budget"]["artifact_bytes_limit"] = size  # code bytes come on top

    edit_config(run, small_limit)
    q = json.loads((run / "quant_summary.json").read_text())
    q["artifact_bytes"] = 1000
    (run / "quant_summary.json").write_text(json.dumps(q))
    report = audit(run, checks=("budgets",))
    c = check(report, "budgets")
    assert report["status"] == "FAIL" and c["status"] == "FAIL"
    assert f"> {size:,}" in c["message"] and "quant_summary.json says the artifact has 1,000 bytes" in c["message"]
    assert c["evidence"]["total_bytes"] == size + c["evidence"]["code_bytes"] and c["evidence"]["code_bytes"] > 0


def test_coverage_message_says_whether_results_json_was_rescored(compliant_run):
    """The whole scored stream re-scored reproduces results.json; a shorter probe prefix re-scores nothing
    of results.json, and the PASS says so instead of counting 0 of N reproduced modes."""
    whole = check(audit(compliant_run, checks=("coverage",), write=False), "coverage")
    n = whole["evidence"]["scored_tokens"]
    assert whole["status"] == "PASS"
    assert whole["message"].endswith(f"re-scored and reproduced results.json for {len(COMPLIANT)} of "
                                     f"{len(COMPLIANT)} modes"), whole["message"]
    prefix = check(audit(compliant_run, checks=("coverage",), max_val_tokens=200, write=False), "coverage")
    assert prefix["status"] == "PASS", prefix["message"]
    assert prefix["message"].endswith(f"results.json not re-scored (probe prefix 200 of {n:,} tokens)"), prefix["message"]
    assert all(e["reproduction"].startswith("not re-scored") for e in prefix["evidence"]["modes"].values())


def test_validation_stream_edited_after_scoring_fails(compliant_run, small_data, tmp_path):
    root, m = small_data
    data = tmp_path / "data"
    shutil.copytree(root, data)
    run = copy_run(compliant_run, tmp_path / "run")

    def point_at_copy(c):
        c["data"]["path"] = str(data / m["dataset_path"])
        c["data"]["tokenizer_path"] = str(data / m["tokenizer_path"])

    edit_config(run, point_at_copy)
    before = audit(run, checks=("coverage", "data"))
    assert statuses(before) == {"coverage": "PASS", "data": "PASS"}, format_table(before)

    shard = list_shards(data / m["dataset_path"], "val")[0]
    toks = np.array(open_shard(shard))
    toks[250] = (int(toks[250]) + 1) % 512  # target 249, and the context of every later target
    write_shard(shard, toks)
    after = audit(run, checks=("coverage", "data"))
    cov, dat = check(after, "coverage"), check(after, "data")
    assert after["status"] == "FAIL" and cov["status"] == "FAIL" and dat["status"] == "FAIL"
    for mode in COMPLIANT:
        assert f"{mode}: re-scoring the " in cov["message"] and "results.json says" in cov["message"]
    assert f"shard sha256 differs from the manifest: {shard.name}" in dat["message"]

    (data / "manifest.json").unlink()  # e.g. challenge-downloaded data: nothing to compare the shards with
    no_manifest = audit(run, checks=("data",))
    d = check(no_manifest, "data")
    assert d["status"] == "SKIP" and d["message"].startswith("SKIP (no manifest)")


def test_cli_table_json_and_exit_status(compliant_run, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="pgolf")
    add_audit_parser(parser.add_subparsers(dest="verb"))
    args = parser.parse_args(["audit", str(compliant_run), "--json", "--checks", "budgets,reference"])
    assert args.fn(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "PASS" and [c["name"] for c in out["checks"]] == ["budgets", "reference"]

    run = copy_run(compliant_run, tmp_path / "run")
    edit_config(run, lambda c: c["budget"].update(artifact_bytes_limit=10))
    args = parser.parse_args(["audit", str(run), "--checks", "budgets"])
    assert args.fn(args) == 1
    table = capsys.readouterr().out
    assert "budgets" in table and "FAIL" in table and "audit: FAIL" in table
    assert json.loads((run / "audit.json").read_text())["status"] == "FAIL"

    args = parser.parse_args(["audit", str(tmp_path / "missing")])
    with pytest.raises(FileNotFoundError, match="missing"):
        args.fn(args)
    (run / "results.json").unlink()
    with pytest.raises(FileNotFoundError, match="results.json"):
        args.fn(parser.parse_args(["audit", str(run)]))


def test_cli_run_seeds_trains_scores_and_audits_each_seed(small_data, tmp_path):
    """`pgolf run --seeds`: one audited run directory per seed; a second call redoes nothing."""
    import json
    import subprocess
    import sys

    root, m = small_data
    sets = [a for s in sets_for(root, m, "train.iterations=4", "score.modes=plain") for a in ("--set", s)]
    cmd = [sys.executable, "-m", "pgolf", "run", "--preset", "tiny", *sets, "--seeds", "3,4", "--out", str(tmp_path),
           "--code-bytes", "1000", "--no-progress"]
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("PGOLF_")} | {"OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    for seed in (3, 4):
        d = tmp_path / f"seed_{seed}"
        assert json.loads((d / "results.json").read_text())["seed"] == seed
        assert json.loads((d / "audit.json").read_text())["status"] == "PASS"
    assert r.stdout.count("audit: PASS") == 2 and f"next: pgolf report {tmp_path / 'seed_3'}" in r.stdout
    again = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert again.returncode == 0 and "audit: PASS" not in again.stdout  # nothing redone, audits kept
    assert (tmp_path / "seed_3" / "log.txt").read_text().count("train_done") == 1
