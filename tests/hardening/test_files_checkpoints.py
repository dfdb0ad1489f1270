"""Checkpoints, final weights and Hessians that cannot be used (issue 13 item 3; the "checkpoint files" fuzz
surface): `train --resume`, `eval --run-dir` and `quantize` answer each with one `pgolf: error:` line naming
the file, no traceback, within the time and memory limits of tests/helpers/cli_fuzz.py.

The inputs come from a real tiny run through a seeded generator: truncations, single bit flips (a flip that
torch still loads to identical contents, in zip padding say, is harmless: left out and counted), missing and
wrong keys, wrong types and shapes, and pickles that would run code. Every case runs in one child
(`run_many`). HARDENING_CHILD_SRC (or HARDENING_LANDED_SRC)=/path/to/other/src runs the same cases against
that source tree (one child per case), e.g. the landed tree, where they fail.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import shutil
from pathlib import Path

import pytest
import torch

from pgolf.model.build import build_gpt
from pgolf.quant.hessian import hessian_params
from pgolf.rundir import load_config
from tests.helpers.cli_fuzz import assert_one_error, run_bounded, run_many
from tests.helpers.runs import cli_sets

LANDED = os.environ.get("HARDENING_CHILD_SRC") or os.environ.get("HARDENING_LANDED_SRC")
CHILD = {"PYTHONPATH": LANDED} if LANDED else {}
SETS = ("train.iterations=3", "train.val_every=0", "train.warmup_steps=0", "train.val_max_tokens=512")
SEED = 20240520
COUNTS: dict[str, int] = {}


def run_cases(cases: list[list[str]]):
    if LANDED:
        return [run_bounded(c, env=CHILD) for c in cases]
    return run_many(cases, seconds_each=60)


def mini_data(root: Path, tiny_data) -> dict:
    """One train and one val shard of the tiny dataset (each resume case then opens less)."""
    d = root / "mini"
    d.mkdir()
    for name in ("fineweb_train_000000.bin", "fineweb_val_000000.bin"):
        shutil.copy(tiny_data["dataset_dir"] / name, d / name)
    return {"dataset_dir": d, "tokenizer": tiny_data["tokenizer"]}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_data) -> Path:
    root = tmp_path_factory.mktemp("ckrun")
    d = root / "run"
    r = run_bounded(["train", "--preset", "tiny", *cli_sets(mini_data(root, tiny_data), *SETS), "--run-dir", d,
                     "--no-progress"], env=CHILD, wall=300, cpu=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return d


class Evil:
    """Unpickling it would run a shell command; weights_only loading must refuse it."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def deep_equal(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b))
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(deep_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(deep_equal(x, y) for x, y in zip(a, b))
    return a == b or (a != a and b != b)  # NaN == NaN here


def saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def byte_mutations(data: bytes, original, rng: random.Random, n_flips: int) -> list[tuple[str, bytes]]:
    """Truncations at fixed and random lengths, then single bit flips whose file no longer loads to `original`."""
    n = len(data)
    cuts = sorted({0, 1, 512, n // 2, n - 22, n - 1, *(rng.randrange(n) for _ in range(2))})
    out = [(f"truncated to {k} bytes", data[:k]) for k in cuts]
    harmless = 0
    while sum(1 for label, _ in out if label.startswith("bit")) < n_flips:
        pos, bit = rng.randrange(n), rng.randrange(8)
        m = bytearray(data)
        m[pos] ^= 1 << bit
        try:
            same = deep_equal(torch.load(io.BytesIO(bytes(m)), weights_only=True), original)
        except Exception:
            same = False
        if same:
            harmless += 1
            continue
        out.append((f"bit {bit} of byte {pos} flipped", bytes(m)))
    COUNTS["harmless flips left out"] = COUNTS.get("harmless flips left out", 0) + harmless
    return out


def checkpoint_mutations(ck: dict, marker: Path) -> list[tuple[str, bytes]]:
    """Well-formed torch files with wrong contents, in the digest-free version-1 form (so the contents, not
    the digest, are what is checked)."""
    base = {k: v for k, v in ck.items() if k != "digest"}
    base["version"] = 1

    def with_(**kw):
        return saved({**base, **kw})

    def without(key):
        return saved({k: v for k, v in base.items() if k != key})

    model = dict(base["model"])
    first = next(iter(model))
    optim = json.loads(json.dumps(base["optim"], default=lambda _: None))  # same structure, no tensors
    loader = dict(base["loader"])
    loader_far = {**loader, "cursors": [[c[0], 10**9, *c[2:]] for c in loader.get("cursors", [])] or [[0, 10**9, 1, 0, 1, 0]]}
    ema = base["ema"]
    out = [(f"missing key {k}", without(k)) for k in ("model", "optim", "loader", "rng", "step", "config_hash")]
    out += [
        ("version 3", with_(version=3)),
        ("not a dict", saved([1, 2, 3])),
        ("step is a string", with_(step="3")),
        ("step is negative", with_(step=-1)),
        ("train_seconds is NaN", with_(train_seconds=float("nan"))),
        ("model is a list", with_(model=list(model.values()))),
        ("model lacks a tensor", with_(model={k: v for k, v in model.items() if k != first})),
        ("model tensor of the wrong shape", with_(model={**model, first: model[first][:1]})),
        ("optimizer states without tensors", with_(optim=optim)),
        ("optimizer is empty", with_(optim={})),
        ("ema is None", with_(ema=None)),
        ("ema shadow of the wrong shapes", with_(ema={**ema, "shadow": [t[:1] for t in ema["shadow"]]})),
        ("loader of another kind", with_(loader={**loader, "kind": "other"})),
        ("loader cursor outside its shard", with_(loader=loader_far)),
        ("rng is empty", with_(rng={})),
        ("torch rng state truncated", with_(rng={**base["rng"], "torch": base["rng"]["torch"][:10]})),
        ("config hash of another run", with_(config_hash="0" * 64)),
        ("qat_bits 99", with_(qat_bits=99)),
        ("val_history is an int", with_(val_history=5)),
        ("a pickle that runs code", saved({**base, "model": Evil(marker)})),
        ("a plain (non-zip) pickle that runs code", pickle.dumps(Evil(marker))),
    ]
    if "digest" in ck:
        out.append(("digest of other contents", saved({**ck, "digest": "0" * 64})))
    return out


def weight_mutations(sd: dict, marker: Path) -> list[tuple[str, bytes]]:
    first = next(iter(sd))
    return [
        ("a list of tensors", saved(list(sd.values()))),
        ("integer keys", saved({i: v for i, v in enumerate(sd.values())})),
        ("a tensor missing", saved({k: v for k, v in sd.items() if k != first})),
        ("an unexpected tensor", saved({**sd, "extra.weight": torch.zeros(3)})),
        ("a tensor of the wrong shape", saved({**sd, first: sd[first][:1]})),
        ("a tensor of the wrong dtype", saved({**sd, first: sd[first].to(torch.int32)})),
        ("a value that is not a tensor", saved({**sd, first: [1.0, 2.0]})),
        ("a pickle that runs code", saved({**sd, first: Evil(marker)})),
        ("a plain (non-zip) pickle that runs code", pickle.dumps(Evil(marker))),
    ]


def case_dir(root: Path, src: Path, i: int, names: tuple[str, ...]) -> Path:
    d = root / f"case{i:03d}"
    (d / "ckpt").mkdir(parents=True)
    for n in names:
        if (src / n).is_file():
            shutil.copy(src / n, d / n)
    return d


def checkpoint_cases(trained: Path, root: Path, marker: Path) -> list[tuple[str, list, Path]]:
    rng = random.Random(SEED)
    data = (trained / "ckpt" / "last.pt").read_bytes()
    ck = torch.load(io.BytesIO(data), weights_only=True)
    out = []
    for i, (label, blob) in enumerate(byte_mutations(data, ck, rng, n_flips=8) + checkpoint_mutations(ck, marker)):
        d = case_dir(root, trained, i, ("config.json", "env.json"))
        (d / "ckpt" / "last.pt").write_bytes(blob)
        out.append((label, ["train", "--resume", d, "--no-progress"], d / "ckpt" / "last.pt"))
    d = case_dir(root, trained, len(out), ("config.json", "env.json"))
    (d / "ckpt" / "last.pt").mkdir()  # a directory where the file should be
    out.append(("a directory", ["train", "--resume", d, "--no-progress"], d / "ckpt" / "last.pt"))
    return out


def weights_cases(trained: Path, root: Path, marker: Path) -> list[tuple[str, list, Path]]:
    """eval --run-dir (float weights) and quantize: with train_summary.json (it records the file's sha256, so
    any change is caught) and without it (the contents themselves are checked)."""
    rng = random.Random(SEED + 1)
    data = (trained / "model_final.pt").read_bytes()
    sd = torch.load(io.BytesIO(data), weights_only=True)
    recorded = byte_mutations(data, sd, rng, n_flips=6)
    unrecorded = weight_mutations(sd, marker) + [("0 bytes", b""), ("truncated", data[: len(data) // 3])]
    out = []
    for i, (label, blob) in enumerate(recorded + unrecorded):
        with_summary = i < len(recorded)
        d = case_dir(root, trained, i, ("config.json", "train_summary.json") if with_summary else ("config.json",))
        (d / "model_final.pt").write_bytes(blob)
        verb = ["eval", "--run-dir", d, "--mode", "plain", "--max-val-tokens", "256"] if i % 2 else \
            ["quantize", "--run-dir", d, "--code-bytes", "0"]
        out.append((f"{label} ({'with' if with_summary else 'without'} train_summary.json)", verb,
                    d / "model_final.pt"))
    return out


def hessian_cases(trained: Path, root: Path, marker: Path) -> list[tuple[str, list, Path]]:
    model = build_gpt(load_config(trained).model, 0, torch.device("cpu"))
    good = {n: torch.eye(p.size(1)) for n, p in hessian_params(model, head=True).items()}
    first = next(iter(good))
    blob = saved(good)
    muts = [
        ("0 bytes", b""), ("truncated", blob[: len(blob) // 2]), ("a list", saved(list(good.values()))),
        ("a Hessian missing", saved({k: v for k, v in good.items() if k != first})),
        ("a Hessian of the wrong shape", saved({**good, first: good[first][:2, :2]})),
        ("a non-finite Hessian", saved({**good, first: good[first] * float("inf")})),
        ("an integer Hessian", saved({**good, first: good[first].long()})),
        ("a pickle that runs code", saved({**good, first: Evil(marker)})),
    ]
    out = []
    for i, (label, b) in enumerate(muts):
        d = case_dir(root, trained, i, ("config.json", "train_summary.json", "model_final.pt"))
        (d / "hessians.pt").write_bytes(b)
        out.append((label, ["quantize", "--run-dir", d, "--code-bytes", "0", "--set", "quant.calib_source=train",
                            "--set", "quant.head_gptq=true"], d / "hessians.pt"))
    return out


@pytest.fixture(scope="module")
def outcomes(trained, tmp_path_factory):
    """{group: [(label, args, file that must be named, result)]}, every case of every group in one child."""
    root = tmp_path_factory.mktemp("ckcases")
    marker = root / "PWNED"
    groups = {"checkpoint (train --resume)": checkpoint_cases(trained, root / "ckpt", marker),
              "final weights (eval --run-dir / quantize)": weights_cases(trained, root / "weights", marker),
              "hessians (quantize, calib_source=train)": hessian_cases(trained, root / "hessians", marker)}
    flat = [c for cases in groups.values() for c in cases]
    res = iter(run_cases([args for _, args, _ in flat]))
    out = {g: [(*c, next(res)) for c in cases] for g, cases in groups.items()}
    print(f"\ncheckpoint-file inputs: { {g: len(v) for g, v in out.items()} }, harmless bit flips left out: "
          f"{COUNTS.get('harmless flips left out', 0)}")
    return out, marker


def check(cases) -> None:
    failures = []
    for label, args, named, r in cases:
        try:
            assert_one_error(r, str(named))
        except AssertionError as e:
            failures.append(f"{label}: {' '.join(map(str, args))}: {str(e)[:600]}")
        assert r.seconds < 60, (label, r.seconds)
    assert not failures, f"{len(failures)} of {len(cases)} cases broke the promise:\n" + "\n".join(failures)


@pytest.mark.parametrize("group", ["checkpoint (train --resume)", "final weights (eval --run-dir / quantize)",
                                   "hessians (quantize, calib_source=train)"])
def test_unusable_files_are_one_error_line_naming_the_file(outcomes, group):
    out, marker = outcomes
    check(out[group])
    assert not marker.exists(), "a file ran code when loaded"
