import json

from pgolf.tools.cli import main


def test_budget_record_exact(capsys, clean_env):
    assert main(["budget", "--preset", "record", "--json"]) == 0
    b = json.loads(capsys.readouterr().out)
    assert b["params_total"] == 27_067_484
    assert b["params_by_role"]["matrix"] == 25_952_256
    assert sum(b["params_by_role"].values()) == b["params_total"]
    assert main(["budget", "--preset", "record", "--set", "model.bigram_buckets=2048", "--set",
                 "model.bigram_dim=128", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params_total"] == 26_993_756


def test_budget_text(capsys, clean_env):
    assert main(["budget", "--preset", "record"]) == 0
    out = capsys.readouterr().out
    assert "params_total: 27,067,484" in out and "matrix" in out


def test_verbs_in_help(capsys):
    from pgolf.tools.cli import build_parser

    verbs = set(build_parser()._subparsers._group_actions[0].choices)
    assert verbs == {"config", "data", "train", "eval", "budget", "bench", "quantize", "run", "bundle", "audit",
                     "report"}


def test_bench_calib_times_both_samplers(capsys, clean_env):
    # 16 tokens <= tiny's rope_ref_len (32): both samplers are the same math, so the same tokens.
    sets = ["--set", "quant.calib_seqs=3", "--set", "quant.calib_seq_len=16", "--set", "quant.calib_batch=2"]
    assert main(["bench", "calib", "--preset", "tiny", "--device", "cpu", "--json", *sets]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["seqs"] == 3 and r["seq_len"] == 16 and r["weights"] == "fresh init"
    for name in ("cache", "nocache"):
        assert r[name]["tokens"] == 3 * 16 and r[name]["seconds"] > 0
    assert r["same_tokens"] is True and r["speedup"] > 0
    assert main(["bench", "calib", "--preset", "tiny", "--device", "cpu", "--json", "--cache-only", *sets]) == 0
    r = json.loads(capsys.readouterr().out)
    assert "nocache" not in r and "same_tokens" not in r
