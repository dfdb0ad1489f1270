import json

from pgolf.cli import main


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
    from pgolf.cli import build_parser

    verbs = set(build_parser()._subparsers._group_actions[0].choices)
    assert verbs == {"config", "data", "train", "eval", "budget", "bench", "quantize", "run", "bundle", "audit",
                     "report"}
