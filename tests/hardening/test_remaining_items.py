"""Regressions for issue 13, items 8, 9 and 11: each input is ONE `pgolf: error:` line naming the file or the
argument (or, for `pgolf data verify`, a FAIL report naming the shard), no traceback, before any work.

- item 8: a tokenizer whose vocabulary is larger than model.vocab_size, given to `pgolf train` (a traceback
  on the landed tree) and to `pgolf eval` (there silently scored with the other tokenizer's byte tables);
- item 9: `pgolf data verify` on a val shard with a valid header and 0 (or 1) tokens (an IndexError), and
  training or scoring on such data, or when the only train shard is shorter than one window of
  train.seq_len + 1 tokens (a ValueError traceback);
- item 11: `pgolf eval --max-val-tokens 1` (a traceback), `--max-val-tokens -1` (silently the whole stream)
  and `--save-nll` pointing at a directory (IsADirectoryError after scoring everything).

All CLI cases run in one child (`cli_fuzz.run_all`); HARDENING_CHILD_SRC=/path/to/other/src runs them against
that tree, one child each (on the landed tree, 3a30210, they fail).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pgolf.data.shards import write_shard
from pgolf.tools.data.verify import format_report, verify
from tests.helpers.cli_fuzz import (
    assert_one_error,
    child_env,
    mini_dataset,
    run_all,
    run_bounded,
    set_args,
    train_tiny,
)
from tests.helpers.paths import shared_dir

REF_TOKENIZER = shared_dir() / "reference" / "tokenizers" / "fineweb_1024_bpe.model"
SETS = ("train.iterations=3", "train.val_every=0", "train.warmup_steps=0", "train.val_max_tokens=512")
SEQ_LEN = 64  # the tiny preset's train.seq_len


def dataset(root: Path, tiny_data, name: str, *, val: int | None = None, train: int | None = None) -> Path:
    """The tiny dataset's first train and val shard, one of them replaced by a valid shard of its first
    `val` / `train` tokens."""
    d = root / name
    d.mkdir()
    for split, n in (("val", val), ("train", train)):
        src = tiny_data["dataset_dir"] / f"fineweb_{split}_000000.bin"
        if n is None:
            shutil.copy(src, d / src.name)
        else:
            write_shard(d / src.name, np.fromfile(src, dtype="<u2", offset=1024)[:n])
    return d


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_data):
    root = tmp_path_factory.mktemp("remaining")
    data = mini_dataset(root, tiny_data)
    run = root / "run"
    train_tiny(run, data, *SETS)
    q = run_bounded(["quantize", "--run-dir", run, "--code-bytes", "0", "--set", "quant.method=rtn"], env=child_env())
    assert q.returncode == 0, q.stderr[-2000:]  # eval --run-dir then scores the artifact (no float-weights warning)
    dirs = {"val0": dataset(root, tiny_data, "val0", val=0), "val1": dataset(root, tiny_data, "val1", val=1),
            "short": dataset(root, tiny_data, "short", train=SEQ_LEN),
            "window": dataset(root, tiny_data, "window", train=SEQ_LEN + 1)}
    (root / "a_dir").mkdir()
    (root / "multi.plain.npy").mkdir()
    (root / "a_file").write_text("not a directory")
    return root, data, run, dirs


def tok_sets(tokenizer, d: Path) -> list[str]:
    return ["--set", f"data.path={d}", "--set", f"data.tokenizer_path={tokenizer}"]


def cases(setup) -> dict[str, tuple[list, tuple[str, ...]]]:
    """name -> (argv, what the one error line must name)."""
    root, data, run, dirs = setup
    tok = data["tokenizer"]
    ev = ["eval", "--run-dir", run, "--mode", "plain"]
    train = ["train", "--preset", "tiny", "--no-progress"]
    return {
        # item 8
        "train, tokenizer 1024 > vocab 512": (
            [*train, *set_args(data, *SETS), "--set", f"data.tokenizer_path={REF_TOKENIZER}", "--run-dir",
             root / "r8"], (str(REF_TOKENIZER), "vocabulary 1024", "model.vocab_size=512")),
        "eval, tokenizer 1024 > vocab 512": (
            [*ev, "--max-val-tokens", "256", "--set", f"data.tokenizer_path={REF_TOKENIZER}"],
            (str(REF_TOKENIZER), "vocabulary 1024", "model.vocab_size=512")),
        # item 9
        "train, 0-token val shard": (
            [*train, *tok_sets(tok, dirs["val0"]), *[x for s in SETS for x in ("--set", s)], "--run-dir", root / "r9a"],
            (str(dirs["val0"] / "fineweb_val_000000.bin"), "0 tokens")),
        "eval, 1-token val shard": (
            [*ev, "--data", dirs["val1"], "--tokenizer", tok],
            (str(dirs["val1"] / "fineweb_val_000000.bin"), "1 tokens")),
        "train, the only train shard shorter than one window": (
            [*train, *tok_sets(tok, dirs["short"]), *[x for s in SETS for x in ("--set", s)], "--run-dir",
             root / "r9b"], (str(dirs["short"]), f"train.seq_len + 1 = {SEQ_LEN + 1} tokens", f"[{SEQ_LEN}]")),
        # item 11
        "--max-val-tokens 1": ([*ev, "--max-val-tokens", "1"], ("--max-val-tokens", "got 1")),
        "--max-val-tokens -1": ([*ev, "--max-val-tokens", "-1"], ("--max-val-tokens", "got -1")),
        "--max-val-tokens -1000": ([*ev, "--max-val-tokens", "-1000"], ("--max-val-tokens", "got -1000")),
        "--save-nll an existing directory": ([*ev, "--save-nll", root / "a_dir"], (str(root / "a_dir"), "directory")),
        "--save-nll ending in /": ([*ev, "--save-nll", f"{root}/new_dir/"], (f"{root}/new_dir/", "directory")),
        "--save-nll beside a file": ([*ev, "--save-nll", root / "a_file" / "x.npy"],
                                     (str(root / "a_file" / "x.npy"), "not a writable directory")),
        "--save-nll, one mode's file a directory": (
            [*ev[:-1], "plain,sliding", "--save-nll", root / "multi.npy"],
            (str(root / "multi.plain.npy"), "directory")),
    }


@pytest.fixture(scope="module")
def outcomes(setup):
    cs = cases(setup)
    return {name: (mentions, r) for (name, (_, mentions)), r in zip(cs.items(), run_all([a for a, _ in cs.values()]))}


CASE_NAMES = ["train, tokenizer 1024 > vocab 512", "eval, tokenizer 1024 > vocab 512", "train, 0-token val shard",
              "eval, 1-token val shard", "train, the only train shard shorter than one window", "--max-val-tokens 1",
              "--max-val-tokens -1", "--max-val-tokens -1000", "--save-nll an existing directory",
              "--save-nll ending in /", "--save-nll beside a file", "--save-nll, one mode's file a directory"]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_one_error_line(outcomes, setup, name):
    mentions, r = outcomes[name]
    assert_one_error(r, *mentions)
    assert r.seconds < 30, f"{name}: {r.seconds:.1f}s"
    root = setup[0]
    assert [p.name for p in root.rglob("*.npy") if p.is_file()] == [], "an NLL file was written"
    assert not [n for n in ("r8", "r9a", "r9b") if (root / n / "model_final.pt").exists()], "a refused run trained"


def test_the_cases_are_all_listed(setup):
    assert list(cases(setup)) == CASE_NAMES


def test_one_window_is_enough(setup):
    """The boundary: one train shard of exactly train.seq_len + 1 tokens trains (a window, no more)."""
    root, data, _, dirs = setup
    r = run_all([["train", "--preset", "tiny", "--no-progress", *tok_sets(data["tokenizer"], dirs["window"]),
                  *[x for s in SETS for x in ("--set", s)], "--run-dir", root / "r_window"]])[0]
    assert r.returncode == 0, r.stderr[-2000:]
    assert (root / "r_window" / "model_final.pt").is_file()


@pytest.mark.parametrize("tokens", [0, 1])
def test_data_verify_reports_a_val_stream_without_targets(setup, tiny_data, tokens):
    """`pgolf data verify` is a report: exit 1, `verify: FAIL (1 problem(s))`, the problem naming the shard
    (text and --json), no traceback."""
    root, data, _, dirs = setup
    d = dirs[f"val{tokens}"]
    shard = d / "fineweb_val_000000.bin"
    args = ["data", "verify", "--data", d, "--tokenizer", data["tokenizer"]]
    text, js = (run_bounded(a, env=child_env(), cpu=60, wall=90) for a in (args, [*args, "--json"]))
    for r in (text, js):
        assert r.returncode == 1 and "Traceback" not in r.stderr and r.stderr.strip() == "", r.stderr[-2000:]
    assert "verify: FAIL (1 problem(s))" in text.stdout, text.stdout
    problems = json.loads(js.stdout)["problems"]
    assert len(problems) == 1 and problems[0].startswith(f"{shard}: the validation stream has {tokens} token(s)")


@pytest.mark.parametrize("tokens", [0, 1])
def test_data_verify_report_in_process(setup, tokens):
    root, data, _, dirs = setup
    d = dirs[f"val{tokens}"]
    rep = verify(d, data["tokenizer"], progress=False)
    assert not rep.ok
    assert rep.problems == [f"{d / 'fineweb_val_000000.bin'}: the validation stream has {tokens} token(s) in 1 "
                            f"shard(s); at least 2 are needed (n tokens hold n - 1 targets)"]
    assert format_report(rep).splitlines()[-2:] == ["verify: FAIL (1 problem(s))", f"  - {rep.problems[0]}"]
