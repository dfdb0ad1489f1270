"""`pgolf bundle`: the runtime closure, the emitted train_gpt.py, and that file run where pgolf is NOT installed.

The end-to-end tests run the bundle with the venv's interpreter under `-S` (no site: the venv's
site-packages, and with it the editable pgolf and every .pth file, are off sys.path) and PYTHONPATH set
to a directory that links only the challenge's packages (torch, numpy, sentencepiece, brotli) and
their own dependencies, from a temporary working directory. Each test first asserts that `import pgolf`
(and tqdm, zstandard) fail there, so a pass means the file really is self-contained.
"""

import argparse
import ast
import base64
import datetime
import importlib.metadata as md
import io
import json
import lzma
import math
import os
import re
import shutil
import subprocess
import sys
import tokenize
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement

from pgolf.config import ConfigError, config_hash, to_dict
from pgolf.data.shards import list_shards, load_val_tokens, write_shard
from pgolf.presets import resolve
from pgolf.tools.bundle import (
    ALLOWED_THIRD_PARTY,
    BundleError,
    StripError,
    add_bundle_parser,
    build_bundle,
    check_stripped,
    code_bytes,
    embedded_sources,
    runtime_closure,
    scan_imports,
    strip_checked,
    strip_source,
    tooling_in,
    without_docstrings,
)

VAL_TOKENS = 16_384
"""The bundle runs score a prefix of the tiny validation stream (the full one takes ~35 s to score on CPU)."""
REPO_SRC = Path(__file__).resolve().parents[2] / "src"
RECORD_CODE_GOAL = 89_245
"""At most 80% of the 111,556 bytes the record bundle took before the restructure (verbatim sources)."""
FRAME = re.compile(r'^  File "<train_gpt\.py>/(pgolf/[^"]+)", line (\d+), in ')


# ------------------------------------------------------------------------------------------------ helpers


def _dists_needed(names) -> dict[str, md.Distribution]:
    """The installed distributions of `names` and, recursively, of their unconditional requirements."""
    seen: dict[str, md.Distribution] = {}
    todo = list(names)
    while todo:
        try:
            d = md.distribution(todo.pop())
        except md.PackageNotFoundError:
            continue
        key = d.metadata["Name"].lower().replace("_", "-")
        if key in seen:
            continue
        seen[key] = d
        for r in d.requires or []:
            req = Requirement(r)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


@pytest.fixture(scope="session")
def challenge_site(tmp_path_factory) -> Path:
    """A site directory holding links to the challenge packages (and their dependencies) only."""
    site = tmp_path_factory.mktemp("challenge_site")
    for d in _dists_needed(sorted(ALLOWED_THIRD_PARTY)).values():
        tops = {Path(f).parts[0] for f in d.files or []}
        for top in sorted(tops - {"..", "__pycache__"}):
            src = Path(d.locate_file(top))
            if src.exists() and not (site / top).exists():
                (site / top).symlink_to(src)
    return site


def challenge_env(site: Path, home: Path, **extra: str) -> dict[str, str]:
    """A clean environment: nothing of the caller's (no PGOLF_*, no PYTHONPATH but the challenge site)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "PYTHONPATH": str(site),
           "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    env.update(extra)
    return env


def py(*args) -> list[str]:
    # -S: no site module, so neither the venv's site-packages nor its .pth files (the editable pgolf).
    return [sys.executable, "-S", *args]


ABSENT_PROBE = """
import importlib, json
found = {}
for mod in ("pgolf", "tqdm", "zstandard", "torch", "numpy", "sentencepiece", "brotli"):
    try:
        importlib.import_module(mod)
        found[mod] = True
    except ModuleNotFoundError:
        found[mod] = False
print(json.dumps(found))
"""


def assert_pgolf_absent(site: Path, cwd: Path) -> None:
    """In the clean setup pgolf (and the optional tqdm, zstandard) cannot be imported; the challenge packages can."""
    r = subprocess.run(py("-c", ABSENT_PROBE), cwd=cwd, env=challenge_env(site, cwd), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"pgolf": False, "tqdm": False, "zstandard": False, "torch": True, "numpy": True,
                                    "sentencepiece": True, "brotli": True}


@pytest.fixture(scope="module")
def small_data(tiny_data, tmp_path_factory) -> Path:
    """The tiny dataset with its validation stream cut to VAL_TOKENS (train shards linked as they are)."""
    src = tiny_data["dataset_dir"]
    dst = tmp_path_factory.mktemp("small_data") / "fineweb10B_sp512"
    dst.mkdir()
    for p in list_shards(src, "train"):
        (dst / p.name).symlink_to(p)
    write_shard(dst / "fineweb_val_000000.bin", load_val_tokens(src)[:VAL_TOKENS])
    return dst


def run_env(site, tmp_path, tiny_data, small_data, **extra) -> dict[str, str]:
    return challenge_env(site, tmp_path, PGOLF_PRESET="tiny", DATA_PATH=str(small_data),
                         TOKENIZER_PATH=str(tiny_data["tokenizer"]), RUN_ID="bundled", SEED="7",
                         PGOLF_TRAIN__ITERATIONS="6", PGOLF_TRAIN__VAL_EVERY="0", **extra)


def check_results(run_dir: Path, out: str) -> dict:
    """The final lines, the artifact and results.json of a finished bundled run."""
    finals = [line for line in out.splitlines() if line.startswith("final_sliding val_loss:")]
    assert len(finals) == 1, out[-3000:]
    bpb = float(finals[0].split("val_bpb:")[1].split()[0])
    assert math.isfinite(bpb) and 0 < bpb < 20
    assert (run_dir / "artifact.pgolf").is_file()
    res = json.loads((run_dir / "results.json").read_text())
    assert {"preset", "seed", "config_hash", "steps", "artifact_bytes", "code_bytes", "total_bytes", "within_limit",
            "modes"} <= set(res)
    assert res["preset"] == "tiny" and res["seed"] == 7 and res["steps"] == 6
    assert res["artifact_bytes"] == (run_dir / "artifact.pgolf").stat().st_size
    assert res["total_bytes"] == res["artifact_bytes"] + res["code_bytes"] and res["within_limit"]
    m = res["modes"]["sliding"]
    assert {"val_loss", "val_bpb", "targets", "bytes"} <= set(m)
    assert math.isfinite(m["val_loss"]) and m["val_bpb"] == pytest.approx(bpb, abs=1e-8)
    assert m["targets"] == VAL_TOKENS - 1
    assert f"total_bytes:{res['total_bytes']} code_bytes:{res['code_bytes']}" in out
    return res


def assert_frames_show_repository_lines(tb: str) -> int:
    """Every traceback frame inside the bundle shows the repository file's line of that number (the code of
    it: a trailing comment is not embedded); -> the number of such frames."""
    lines = tb.splitlines()
    n = 0
    for i, line in enumerate(lines):
        m = FRAME.match(line)
        if m:
            repo = (REPO_SRC / m[1]).read_text(encoding="utf-8").splitlines()[int(m[2]) - 1].strip()
            shown = lines[i + 1].strip()
            assert shown and repo.startswith(shown) and not shown.startswith("#"), (line, shown, repo)
            n += 1
    return n


def embedded(text: str) -> dict[str, str]:
    """{module: embedded source} of a readable train_gpt.py, read back with ast."""
    out = {}
    for node in ast.parse(text).body:
        if isinstance(node, ast.Assign) and isinstance(t := node.targets[0], ast.Subscript):
            out[ast.literal_eval(t.slice)] = ast.literal_eval(node.value)
    return out


def bundle_cli(*argv: str) -> int:
    p = argparse.ArgumentParser()
    add_bundle_parser(p.add_subparsers())
    args = p.parse_args(["bundle", *argv])
    return args.fn(args)


# ------------------------------------------------------------------------------------------------ closure


def test_closure_is_computed_and_runtime_only():
    cfg, _ = resolve("record", [], env={})
    b = build_bundle(cfg)
    mods = set(b.modules)
    assert {"pgolf", "pgolf.pipeline", "pgolf.train.loop", "pgolf.quant.artifact", "pgolf.scoring.evaluate",
            "pgolf.runtime", "pgolf.presets", "pgolf.config", "pgolf.quant", "pgolf.train"} <= mods
    assert not mods & {"pgolf.__main__", "pgolf.tools"}
    assert not any(m.startswith("pgolf.tools") for m in mods)
    assert tooling_in(b.modules) == {}
    for info in b.modules.values():
        assert info.third_party_top <= ALLOWED_THIRD_PARTY, info.name
    assert "zstandard" in b.modules["pgolf.quant.codecs"].third_party_lazy  # optional: recorded, not refused


def _fake_package(root: Path, files: dict[str, str]) -> Path:
    for rel, src in files.items():
        p = root / "pgolf" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(src)
    return root / "pgolf"


def test_closure_walks_local_relative_and_submodule_imports(tmp_path):
    pkg = _fake_package(tmp_path, {
        "__init__.py": "",
        "a.py": "import torch\nfrom pgolf.sub import b\n\ndef f():\n    from .c import g\n    import tqdm\n",
        "sub/__init__.py": "",
        "sub/b.py": "try:\n    import zstandard\nexcept ImportError:\n    zstandard = None\n",
        "c.py": "import numpy as np\n\ndef g():\n    pass\n",
        "tool.py": "import scipy\n",
    })
    mods = runtime_closure("def main():\n    from pgolf.a import f\n", pkg)
    assert list(mods) == ["pgolf", "pgolf.a", "pgolf.c", "pgolf.sub", "pgolf.sub.b"]
    assert mods["pgolf.sub"].is_package and not mods["pgolf.a"].is_package
    assert mods["pgolf.a"].third_party_lazy == {"tqdm"} and mods["pgolf.sub.b"].third_party_lazy == {"zstandard"}
    assert mods["pgolf.c"].imported_by == "pgolf.a"


def test_closure_refuses_top_level_third_party_and_missing_modules(tmp_path):
    pkg = _fake_package(tmp_path, {"__init__.py": "", "a.py": "import scipy.linalg\nimport tqdm\nimport torch\n",
                                   "b.py": "from pgolf.nope import x\n"})
    with pytest.raises(BundleError, match=r"pgolf\.a imports scipy, tqdm"):
        runtime_closure("from pgolf.a import f\n", pkg)
    with pytest.raises(BundleError, match=r"pgolf\.nope: no such module \(imported by pgolf\.b\)"):
        runtime_closure("from pgolf.b import f\n", pkg)
    info = scan_imports("pgolf.x", "from __future__ import annotations\nimport os, json\nimport brotli\n")
    assert info.third_party_top == {"brotli"} and not info.imports


# ------------------------------------------------------------------------------------------------ stripping

STRIP_CASES = {
    'def f(): "x"; return 1\n': 'def f(): return 1\n',
    'def f(): "x"\n': 'def f(): ...\n',
    'x = 1; "doc"; y = 2  # c\n': 'x = 1; y = 2\n',
    '"""module"""\n# comment\nx = 1  # one\n"""x doc"""\n': '\n\nx = 1\n\n',
    'class E(Exception):\n    """one\n    two"""\n\n\nclass F:\n    x: int\n    """x doc"""\n\n    def m(self):\n'
    '        """m"""  # c\n        return "not a docstring"\n':
        'class E(Exception):\n    ...\n\n\n\nclass F:\n    x: int\n\n\n    def m(self):\n\n        return "not a docstring"\n',
    '("a"  # c\n "b")\ns = "é # not a comment"  # ö\n': '\n\ns = "é # not a comment"\n',
    'def g():\n    x = 1\n    "kept: not a docstring, not in a module or class body"\n':
        'def g():\n    x = 1\n    "kept: not a docstring, not in a module or class body"\n',
    'async def h():\n  """x"""\n': 'async def h():\n  ...\n',
}


def test_strip_cases_and_refusals():
    for src, want in STRIP_CASES.items():
        assert strip_checked(src) == want, src
    with pytest.raises(StripError, match="between a header and code"):
        strip_source('def f(): """a\nb"""; return 1\n')
    with pytest.raises(StripError, match="carriage returns"):
        strip_source("x = 1\r\n")
    src = 'def f():\n    """doc"""\n    return 1\n'
    check_stripped(src, strip_source(src))
    with pytest.raises(StripError, match="line count"):
        check_stripped(src, "def f():\n    return 1\n")
    with pytest.raises(StripError, match="not the same code"):
        check_stripped(src, "def f():\n\n    return 2\n")
    with pytest.raises(StripError, match="not the same code"):  # the same code, a line off
        check_stripped(src, "def f():\n    return 1\n\n")


def test_stripped_modules_keep_every_line_and_the_ast():
    cfg, _ = resolve("record", [], env={})
    b = build_bundle(cfg)
    got = embedded(b.readable)
    assert b.stripped and got == embedded_sources(b.modules) and list(got) == list(b.modules)
    for name, info in b.modules.items():
        src, out = info.source, got[name]
        check_stripped(src, out, name)  # what the bundler checked: the same AST minus docstrings, line for line
        assert ast.dump(ast.parse(out)) == ast.dump(without_docstrings(src))
        old, new = src.split("\n"), out.split("\n")
        assert len(old) == len(new), name
        for i, (o, n) in enumerate(zip(old, new), 1):  # each line is blank, `...` or the start of the original
            assert n == o[: len(n)] or n.strip() == "...", f"{name}:{i}: {n!r} vs {o!r}"
        tree = ast.parse(out)
        scopes = [x for x in ast.walk(tree) if isinstance(x, (ast.Module, ast.ClassDef, ast.FunctionDef))]
        assert all(ast.get_docstring(x, clean=False) is None for x in scopes), name
        assert not [t for t in tokenize.generate_tokens(io.StringIO(out).readline) if t.type == tokenize.COMMENT]
    assert sum(map(len, got.values())) < 0.8 * sum(len(i.source) for i in b.modules.values())


def _readable(text: str) -> str:
    if text.startswith("#!"):
        return text
    return lzma.decompress(base64.b85decode(text.split('b85decode("')[1].split('")')[0])).decode()


def test_record_bundle_size_and_keep_docs(tmp_path, capsys):
    """The default embeds stripped sources; --keep-docs the repository's files verbatim; both record the form."""
    meta = {}
    for form, flags in (("stripped", []), ("verbatim", ["--keep-docs"])):
        out = tmp_path / form
        assert bundle_cli("--preset", "record", "--out", str(out), *flags) == 0
        meta[form] = json.loads((out / "bundle.json").read_text())
        assert meta[form]["sources"] == form and meta[form]["compressed"]
        assert f"({form})" in capsys.readouterr().out and form in (out / "README.md").read_text()
        text = _readable((out / "train_gpt.py").read_text())
        assert len(text.encode()) == meta[form]["sizes"]["readable"]
        mods = embedded(text)
        assert list(mods) == meta[form]["modules"]
        repo = {n: (REPO_SRC / n.replace(".", "/")).with_suffix(".py") for n in mods}
        repo = {n: p if p.is_file() else p.with_suffix("") / "__init__.py" for n, p in repo.items()}
        verbatim = {n: p.read_text(encoding="utf-8") for n, p in repo.items()}
        if form == "verbatim":
            assert mods == verbatim and "The sources are embedded verbatim" in text
        else:
            assert mods == {n: strip_checked(v) for n, v in verbatim.items()} and "stripped of docstrings" in text
    s, v = meta["stripped"], meta["verbatim"]
    print(f"record train_gpt.py: stripped {s['sizes']} ; --keep-docs {v['sizes']}")
    assert s["code_bytes"] <= RECORD_CODE_GOAL < v["code_bytes"]
    assert s["sizes"]["readable"] < v["sizes"]["readable"]


# ------------------------------------------------------------------------------------------------ emission


def test_bundle_is_deterministic_and_reproduces_the_config(tmp_path):
    cfg, _ = resolve("tiny", ["train.iterations=7", "model.ve_layers=0,1", "score.modes=plain,sliding",
                              "optim.matrix_lr=0.0123", "data.path=/x/y"], env={})
    a, b = build_bundle(cfg), build_bundle(cfg)
    assert a.readable == b.readable and a.compressed == b.compressed
    assert a.overrides == {"model.ve_layers": (0, 1), "data.path": "/x/y", "train.iterations": 7,
                           "optim.matrix_lr": 0.0123, "score.modes": ("plain", "sliding")}
    assert a.sizes["compressed"] < a.sizes["readable"] / 2
    assert a.text() is a.compressed and a.text(compress=False) is a.readable
    own = a.readable.split("\n_SOURCES[")[0] + a.readable.split("\n_PACKAGES = ")[1]  # all but the sources
    assert datetime.date.today().isoformat() not in own  # no date stamp (same inputs, same bytes)
    # The compressed form is a wrapper around exactly the readable text.
    blob = a.compressed.split('b85decode("')[1].split('")')[0]
    assert lzma.decompress(base64.b85decode(blob)).decode() == a.readable


def test_bundle_record_from_run_dir(tmp_path, capsys):
    cfg, _ = resolve("tiny", ["train.iterations=9", "seed=5", "run_id=r1"], env={})
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"config": to_dict(cfg), "config_hash": config_hash(cfg)}))
    (run / "artifact.pgolf").write_bytes(b"\0" * 1000)
    out = tmp_path / "rec"
    assert bundle_cli("--run-dir", str(run), "--out", str(out), "--author", "me") == 0
    text = capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {"train_gpt.py", "requirements.txt", "README.md", "submission.json",
                                               "bundle.json"}
    meta = json.loads((out / "bundle.json").read_text())
    n = code_bytes(out / "train_gpt.py")
    assert meta["code_bytes"] == n and meta["compressed"] and meta["preset"] == "tiny" and meta["sources"] == "stripped"
    assert meta["overrides"] == {"seed": 5, "train.iterations": 9} and meta["config_hash"] == config_hash(cfg)
    assert meta["model_bytes"] == 1000 and meta["total_bytes"] == n + 1000 and "pgolf.pipeline" in meta["modules"]
    assert f"code_bytes: {n}" in text and f"total_bytes: {n + 1000}" in text and "ok," in text
    sub = json.loads((out / "submission.json").read_text())
    assert sub["val_bpb"] is None and sub["bytes_code"] == n and sub["bytes_model"] == 1000
    assert sub["bytes_total"] == n + 1000 and sub["author"] == "me" and sub["compliance"] == "compliant"
    readme = (out / "README.md").read_text()
    assert "torchrun --standalone --nproc_per_node=8 train_gpt.py" in readme and "train.iterations: 20 -> 9" in readme
    assert "requirements" in readme and (out / "requirements.txt").read_text().startswith("brotli")

    # Existing output needs --force; an artifact over the limit is reported INVALID with exit code 1.
    with pytest.raises(ConfigError, match="not empty"):
        bundle_cli("--run-dir", str(run), "--out", str(out))
    with (run / "artifact.pgolf").open("wb") as fh:
        fh.truncate(16_000_000)
    assert bundle_cli("--run-dir", str(run), "--out", str(out), "--force", "--no-compress") == 1
    text = capsys.readouterr().out
    assert "INVALID: over budget by" in text
    assert not json.loads((out / "bundle.json").read_text())["compressed"]
    assert (out / "train_gpt.py").read_text().startswith("#!/usr/bin/env python3")


def test_bundle_cli_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such directory"):
        bundle_cli("--run-dir", str(tmp_path / "missing"), "--out", str(tmp_path / "o"))
    with pytest.raises(ConfigError, match="unknown preset"):
        bundle_cli("--preset", "nope", "--out", str(tmp_path / "o"))
    with pytest.raises(ConfigError, match="--run-dir RUN_DIR or --preset"):
        bundle_cli("--out", str(tmp_path / "o"))
    with pytest.raises(ConfigError, match="unknown config key"):
        bundle_cli("--preset", "tiny", "--set", "train.iters=3", "--out", str(tmp_path / "o"))


# ------------------------------------------------------------------------------------------------ running it


def test_bundle_imports_and_config_without_pgolf(tmp_path, challenge_site):
    """Import hook, tracebacks, refusal of non-bundled pgolf modules and the default config, quickly (no torch)."""
    cfg, _ = resolve("tiny", ["train.iterations=9", "model.ve_layers=0,1"], env={})
    bundle = tmp_path / "train_gpt.py"
    bundle.write_text(build_bundle(cfg).readable)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    assert_pgolf_absent(challenge_site, cwd)
    probe = f"""
import inspect, json, os, runpy, sys, traceback
g = runpy.run_path({str(bundle)!r}, run_name="bundle")
import pgolf.presets
from pgolf.config import config_hash
from pgolf.presets import resolve
out = {{"file": pgolf.presets.__file__, "src": "def resolve(" in inspect.getsource(resolve),
       "default": config_hash(g["bundle_config"]({{}})),
       "seed": g["bundle_config"]({{"SEED": "3", "PGOLF_TRAIN__ITERATIONS": "4"}}).seed,
       "iters": g["bundle_config"]({{"PGOLF_TRAIN__ITERATIONS": "4"}}).train.iterations,
       "ve": list(g["bundle_config"]({{}}).model.ve_layers),
       "other": list(g["bundle_config"]({{"PGOLF_PRESET": "cpu"}}).model.ve_layers)}}
try:
    import pgolf.tools.cli
except ModuleNotFoundError as e:
    out["cli"] = str(e)
try:
    resolve("tiny", ["nope=1"], env={{}})
except Exception:
    out["tb"] = traceback.format_exc()
os.environ["PGOLF_TRAIN__ITERATONS"] = "3"
out["rc"] = g["main"]([])
out["torch"] = "torch" in sys.modules  # a config error fails before torch is imported
print(json.dumps(out))
"""
    r = subprocess.run(py("-c", probe), cwd=cwd, env=challenge_env(challenge_site, cwd), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.splitlines()[-1])
    assert out["file"] == "<train_gpt.py>/pgolf/presets.py" and out["src"]
    assert out["default"] == config_hash(cfg)
    assert out["seed"] == 3 and out["iters"] == 4 and out["ve"] == [0, 1]
    assert out["other"] == [2, 3]  # another preset: the bundled overrides (differences from tiny) do not apply
    assert "is not in this bundle" in out["cli"]
    assert 'File "<train_gpt.py>/pgolf/config/overrides.py"' in out["tb"] and "raise unknown_key(" in out["tb"]
    assert assert_frames_show_repository_lines(out["tb"]) >= 2  # stripped sources, the repository's line numbers
    assert out["rc"] == 2 and not out["torch"]
    assert "train_gpt.py: error: unknown config key 'train.iteratons'" in r.stderr
    assert "did you mean train.iterations" in r.stderr


def test_bundled_train_gpt_runs_the_pipeline_without_pgolf(tmp_path, tiny_data, small_data, challenge_site):
    """The emitted (compressed) train_gpt.py trains, quantizes and scores the tiny preset in a clean interpreter."""
    rec = tmp_path / "rec"
    assert bundle_cli("--preset", "record", "--out", str(rec)) == 0
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    assert_pgolf_absent(challenge_site, cwd)
    env = run_env(challenge_site, tmp_path, tiny_data, small_data)
    r = subprocess.run(py(str(rec / "train_gpt.py")), cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = check_results(cwd / "runs" / "bundled", r.stdout)
    assert res["code_bytes"] == code_bytes(rec / "train_gpt.py")
    assert "bundle pgolf:" in r.stdout and "preset:tiny bundled_preset:record" in r.stdout

    # A failure inside an embedded module shows its source lines in the traceback.
    r = subprocess.run(py(str(rec / "train_gpt.py")), cwd=cwd, env={**env, "DATA_PATH": str(tmp_path / "nodata")},
                       capture_output=True, text=True, timeout=120)
    lines = r.stderr.splitlines()
    frames = [i for i, line in enumerate(lines) if line.startswith('  File "<train_gpt.py>/pgolf/')]
    assert r.returncode == 1 and frames, r.stderr[-3000:]
    assert all(lines[i + 1].startswith("    ") and lines[i + 1].strip() for i in frames)  # the source line
    assert assert_frames_show_repository_lines(r.stderr) == len(frames)  # of the repository's line number


@pytest.mark.dist
def test_bundled_train_gpt_under_torchrun(tmp_path, tiny_data, small_data, challenge_site):
    """The readable train_gpt.py on 2 gloo ranks via torchrun (each rank also started without pgolf)."""
    if shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists():
        pytest.skip("torchrun not found")
    cfg, _ = resolve("tiny", [], env={})
    bundle = tmp_path / "train_gpt.py"
    bundle.write_text(build_bundle(cfg).readable)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = run_env(challenge_site, tmp_path, tiny_data, small_data)
    # --no-python: torchrun runs the given command itself, so every rank gets `python -S`.
    cmd = py("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--no-python", *py(str(bundle)))
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = check_results(cwd / "runs" / "bundled", r.stdout)
    assert res["world_size"] == 2
    assert np.isfinite(res["modes"]["sliding"]["val_loss"])
