"""`pgolf bundle`: amalgamate pgolf's runtime modules into one self-contained `train_gpt.py`.

The challenge ships a single file, and its bytes count towards the 16,000,000-byte cap. The bundle keeps
the package's module boundaries instead of flattening them: every runtime module's source is embedded
verbatim in a dict and served to `import` by a tiny meta-path hook, so `from pgolf.x import y` works
unchanged inside the file and nothing needs rewriting.

Layout of the emitted (readable) train_gpt.py, top to bottom:

    docstring            what it is, how to run it, which preset and pgolf version it came from
    _SOURCES["pgolf..."] = r'''<module source>'''     one assignment per runtime module, sorted by name
    _PACKAGES            the names that are packages (they get __path__ = [], so submodules import)
    _BundleImporter      meta-path finder + loader, inserted FIRST in sys.meta_path: the embedded
                         modules win over an installed pgolf, and any other pgolf.* name is refused
                         (never a silent mix of bundled and installed code). Module __file__ is
                         "<train_gpt.py>/pgolf/x.py" and linecache holds the source, so tracebacks
                         show the embedded lines.
    BUNDLE_PRESET, BUNDLE_OVERRIDES
                         the preset name and {dotted key: value} applied on top of it: preset +
                         overrides == the bundled run's config (config_hash checked at bundle time)
    bundle_config()      preset (PGOLF_PRESET, default BUNDLE_PRESET) -> BUNDLE_OVERRIDES (only for the
                         bundled preset: they are differences from it) -> challenge env names
                         (DATA_PATH, SEED, ...) -> PGOLF_SECTION__KEY -> --set
    main()               bundle_config(os.environ), runtime.init (torchrun's env), then
                         pipeline.run_record (train -> quantize -> score the artifact) with code_bytes =
                         the size of this very file; prints a bundle header line and a total_bytes line.

The compressed form (the default when smaller, always the case in practice) wraps that whole text as
lzma + base85 in a four-line self-extracting script; `--no-compress` keeps the readable one.

Which modules go in is computed, not listed: the imports of bundle_config() and main() and, transitively,
every `import pgolf.x` / `from pgolf.x import y` in the modules reached (function-local imports
included), found with `ast`. A runtime module that imports a third-party package other than torch, numpy,
sentencepiece and brotli at module level fails the bundle (function-local imports of optional packages
such as zstandard or tqdm are recorded in bundle.json, not refused).

The emitted file is deterministic: same sources, config and pgolf version -> same bytes.
"""

from __future__ import annotations

import argparse
import ast
import base64
import datetime
import hashlib
import json
import lzma
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pgolf
from pgolf.config import ConfigError, Override, RunConfig, apply_overrides, config_hash, diff
from pgolf.presets import get_preset, resolve
from pgolf.rundir import ARTIFACT, load_config

ALLOWED_THIRD_PARTY = frozenset({"torch", "numpy", "sentencepiece", "brotli"})
"""The challenge environment: the only packages a runtime module may import at module level."""

TOOLING_PREFIX = "pgolf.tools"
"""Tooling lives in this package; runtime modules never import it (a test pins that), so the runtime
closure below never contains it. A tooling module found in the closure anyway is named in a warning."""

BUNDLE_FILE = "train_gpt.py"
VIRTUAL_ROOT = "<train_gpt.py>"
"""Prefix of the embedded modules' __file__ (not a real path: nothing may read files beside the bundle)."""

RECORD_FILES = ("train_gpt.py", "requirements.txt", "README.md", "submission.json", "bundle.json")


class BundleError(ConfigError):
    """The runtime closure cannot be bundled (a forbidden import, a missing module)."""


# --------------------------------------------------------------------------------------------------
# The runtime closure
# --------------------------------------------------------------------------------------------------


@dataclass
class ModuleInfo:
    name: str
    path: Path
    is_package: bool
    source: str
    imports: set[str] = field(default_factory=set)
    """pgolf modules this one imports (anywhere in the file)."""
    third_party_top: set[str] = field(default_factory=set)
    """Non-stdlib, non-pgolf top-level packages imported unconditionally at module level."""
    third_party_lazy: set[str] = field(default_factory=set)
    """Other non-stdlib packages imported only inside functions or try blocks (optional at run time)."""
    imported_by: str = ""
    """The first module (or main()) found importing this one: the reason it is in the closure."""


def package_dir() -> Path:

    return Path(pgolf.__file__).resolve().parent


def module_path(name: str, root: Path | None = None) -> tuple[Path, bool] | None:
    """(file, is_package) of pgolf module `name` under `root` (default: the installed package), or None."""
    parts = name.split(".")
    if parts[0] != "pgolf":
        return None
    base = (root or package_dir()).joinpath(*parts[1:])
    if (base / "__init__.py").is_file():
        return base / "__init__.py", True
    if parts[1:] and base.with_name(base.name + ".py").is_file():
        return base.with_name(base.name + ".py"), False
    return None


def _absolute(node: ast.ImportFrom, name: str, is_package: bool) -> str:
    """The absolute module of a (possibly relative) `from ... import`."""
    if not node.level:
        return node.module or ""
    pkg = name if is_package else name.rpartition(".")[0]
    for _ in range(node.level - 1):
        pkg = pkg.rpartition(".")[0]
    return f"{pkg}.{node.module}" if node.module else pkg


def scan_imports(name: str, source: str, is_package: bool = False, root: Path | None = None,
                 filename: str = "<source>") -> ModuleInfo:
    """Parse `source` and classify every import statement in it (module level or not)."""
    tree = ast.parse(source, filename=filename)
    # Only statements directly in the module body run unconditionally at import; imports inside
    # functions, classes, `try` or `if` blocks are optional as far as the challenge environment goes.
    top = {id(n) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))}
    info = ModuleInfo(name, Path(filename), is_package, source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, name, is_package)
            mods = [base]
            if base.split(".")[0] == "pgolf":  # `from pgolf.x import y` may name submodule pgolf.x.y
                mods += [f"{base}.{a.name}" for a in node.names
                         if a.name != "*" and module_path(f"{base}.{a.name}", root) is not None]
        else:
            continue
        for mod in mods:
            head = mod.split(".")[0]
            if head == "pgolf":
                info.imports.add(mod)
            elif head in sys.stdlib_module_names or not head:
                continue
            elif id(node) in top:
                info.third_party_top.add(head)
            else:
                info.third_party_lazy.add(head)
    info.third_party_lazy -= info.third_party_top | ALLOWED_THIRD_PARTY
    return info


def runtime_closure(entry_source: str, root: Path | None = None) -> dict[str, ModuleInfo]:
    """{module name: ModuleInfo} for every pgolf module reachable from `entry_source`'s imports, with
    their parent packages; raises BundleError naming any missing module or forbidden top-level import."""
    entry = scan_imports("__main__", entry_source, filename="<main>")
    out: dict[str, ModuleInfo] = {}
    importers: dict[str, str] = {m: "main()" for m in entry.imports}
    todo = sorted(entry.imports)
    while todo:
        name = todo.pop()
        if name in out:
            continue
        parts = name.split(".")
        for i in range(1, len(parts)):  # importing pgolf.a.b executes pgolf and pgolf.a first
            parent = ".".join(parts[:i])
            if parent not in out and parent not in todo:
                importers.setdefault(parent, name)
                todo.append(parent)
        found = module_path(name, root)
        if found is None:
            raise BundleError(f"{name}: no such module (imported by {importers.get(name, '?')})")
        path, is_pkg = found
        info = scan_imports(name, path.read_text(encoding="utf-8"), is_pkg, root, filename=str(path))
        info.path = path
        info.imported_by = importers.get(name, "?")
        out[name] = info
        for dep in sorted(info.imports):
            if dep not in out:
                importers.setdefault(dep, name)
                todo.append(dep)
    bad = {n: sorted(i.third_party_top - ALLOWED_THIRD_PARTY) for n, i in out.items()}
    bad = {n: b for n, b in bad.items() if b}
    if bad:
        listing = "; ".join(f"{n} imports {', '.join(b)}" for n, b in sorted(bad.items()))
        raise BundleError(f"runtime modules import packages outside {sorted(ALLOWED_THIRD_PARTY)} at module "
                          f"level: {listing} (make the import function-local and optional, or drop it)")
    return dict(sorted(out.items()))


def tooling_in(modules: dict[str, ModuleInfo]) -> dict[str, str]:
    """{tooling module in the closure: the module that pulled it in}."""
    return {n: i.imported_by for n, i in modules.items() if n == TOOLING_PREFIX or n.startswith(TOOLING_PREFIX + ".")}


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------

_HEADER = '''\
#!/usr/bin/env python3
"""train_gpt.py: a pgolf {version} bundle of preset {preset!r}, generated by `pgolf bundle`; do not edit.

Run:   torchrun --standalone --nproc_per_node=8 train_gpt.py      (or: python train_gpt.py)
Needs: torch, numpy, sentencepiece, brotli (pgolf itself is embedded below; it need not be installed).
Config: the preset (PGOLF_PRESET, default {preset!r}) plus the bundled overrides (BUNDLE_OVERRIDES, for
that preset only), then the challenge's variables (DATA_PATH, TOKENIZER_PATH, SEED, RUN_ID, ...), then
PGOLF_SECTION__KEY=value variables, then `--set section.key=value` arguments. Output: runs/<run_id>/
(or --run-dir): log.txt, artifact.pgolf, results.json.

Layout: _SOURCES holds the source of each pgolf runtime module; _BundleImporter serves them to `import`
(module files show as {root}/pgolf/...); main() resolves the config and calls pipeline.run_record.
"""

import importlib.abc
import importlib.util
import linecache
import sys

_SOURCES = {{}}
'''

_IMPORTER = '''
_PACKAGES = frozenset({packages})


def _filename(name):
    return "{root}/" + name.replace(".", "/") + ("/__init__.py" if name in _PACKAGES else ".py")


class _BundleImporter(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves the embedded modules. It is first in sys.meta_path, so an installed pgolf never shadows the
    bundle, and it refuses pgolf.* names that are not embedded, so the two can never mix."""

    def find_spec(self, name, path=None, target=None):
        if name in _SOURCES:
            return importlib.util.spec_from_loader(name, self, origin=_filename(name),
                                                   is_package=name in _PACKAGES)
        if name == "pgolf" or name.startswith("pgolf."):
            raise ModuleNotFoundError(f"{{name}} is not in this bundle (only pgolf's runtime modules are)",
                                      name=name)
        return None

    def create_module(self, spec):
        return None  # the default module object

    def exec_module(self, module):
        name = module.__name__
        fn = module.__file__ = _filename(name)
        src = _SOURCES[name]
        linecache.cache[fn] = (len(src), None, src.splitlines(True), fn)  # mtime None: never invalidated
        exec(compile(src, fn, "exec", dont_inherit=True), module.__dict__)

    def get_source(self, name):
        return _SOURCES[name]


sys.meta_path.insert(0, _BundleImporter())

BUNDLE_PRESET = {preset!r}
BUNDLE_OVERRIDES = {overrides}
'''

# bundle_config() and main() are also what the closure is computed from: their pgolf imports are the roots.
_MAIN = '''

def bundle_config(environ, sets=()):
    """The run's config: preset (PGOLF_PRESET, default BUNDLE_PRESET) -> BUNDLE_OVERRIDES (for the bundled
    preset only: they are differences from it) -> challenge names and PGOLF_ variables -> `sets`."""
    from pgolf.config import Override, apply_overrides, env_overrides, parse_set
    from pgolf.presets import get_preset

    preset = environ.get("PGOLF_PRESET", BUNDLE_PRESET)
    bundled = [Override(k, v, "bundle") for k, v in BUNDLE_OVERRIDES.items()] if preset == BUNDLE_PRESET else []
    return apply_overrides(get_preset(preset), bundled + env_overrides(environ) + parse_set(sets))


def main(argv=None):
    import argparse
    import hashlib
    import os

    p = argparse.ArgumentParser(description="pgolf bundle: train -> quantize -> score (see the docstring)")
    p.add_argument("--run-dir", default=None, help="output directory (default runs/<run_id>)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (after the environment)")
    args = p.parse_args(argv)

    import pgolf
    from pgolf.config import ConfigError, config_hash

    try:  # before torch is imported: a typo fails in a blink, as one line
        cfg = bundle_config(os.environ, args.sets)
    except ConfigError as e:
        print(f"train_gpt.py: error: {e}", file=sys.stderr)
        return 2
    from pgolf import runtime
    from pgolf.pipeline import run_record
    from pgolf.rundir import default_run_dir

    me = globals().get("__file__")
    code = open(me, "rb").read() if me and os.path.isfile(me) else b""
    # For the run's records (env.json may report it): which exact file ran.
    pgolf.__bundle__ = {"sha256": hashlib.sha256(code).hexdigest(), "code_bytes": len(code)}
    env = runtime.init(args.device)
    try:
        run_dir = args.run_dir or default_run_dir(cfg, env)
        if env.is_main:
            print(f"bundle pgolf:{pgolf.__version__} preset:{cfg.preset} bundled_preset:{BUNDLE_PRESET} "
                  f"config_hash:{config_hash(cfg)[:16]} code_bytes:{len(code)} "
                  f"bundle_sha256:{pgolf.__bundle__['sha256'][:16]} run_dir:{run_dir}", flush=True)
        res = run_record(cfg, env, run_dir, code_bytes=len(code))
        if env.is_main:
            limit = cfg.budget.artifact_bytes_limit
            verdict = "ok" if res["total_bytes"] <= limit else "INVALID: over budget"
            print(f"total_bytes:{res['total_bytes']} code_bytes:{len(code)} artifact_bytes:{res['artifact_bytes']} "
                  f"limit:{limit} {verdict}", flush=True)
    finally:
        runtime.shutdown(env)
    return 0


if __name__ == "__main__":
    import traceback

    # The interpreter's own traceback printer reads source files from disk, which the embedded modules are
    # not; traceback.print_exception reads linecache, where their sources are.
    sys.excepthook = traceback.print_exception
    raise SystemExit(main())
'''


def _literal(src: str) -> str:
    """A raw triple-quoted literal when that round-trips exactly (readable), else repr()."""
    if "'''" not in src and "\r" not in src and not src.endswith(("\\", "'")):
        return "r'''" + src + "'''"
    return repr(src)


def _overrides_literal(overrides: dict[str, Any]) -> str:
    if not overrides:
        return "{}"
    return "{\n" + "".join(f"    {k!r}: {v!r},\n" for k, v in overrides.items()) + "}"


def render(modules: dict[str, ModuleInfo], preset: str, overrides: dict[str, Any], version: str) -> str:
    """The readable train_gpt.py text."""
    parts = [_HEADER.format(version=version, preset=preset, root=VIRTUAL_ROOT)]
    for name, info in modules.items():
        parts.append(f"_SOURCES[{name!r}] = {_literal(info.source)}\n")
    packages = ", ".join(repr(n) for n, i in modules.items() if i.is_package)
    parts.append(_IMPORTER.format(packages="{" + packages + "}", root=VIRTUAL_ROOT, preset=preset,
                                  overrides=_overrides_literal(overrides)))
    parts.append(_MAIN)
    text = "".join(parts)
    _check_roundtrip(text, modules, overrides)
    return text


def _check_roundtrip(text: str, modules: dict[str, ModuleInfo], overrides: dict[str, Any]) -> None:
    """The embedded sources and overrides read back (by the Python parser) exactly as given."""
    tree = ast.parse(text, filename=BUNDLE_FILE)
    got: dict[str, str] = {}
    got_over = None
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            t = node.targets[0]
            if isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name) and t.value.id == "_SOURCES":
                got[ast.literal_eval(t.slice)] = ast.literal_eval(node.value)
            elif isinstance(t, ast.Name) and t.id == "BUNDLE_OVERRIDES":
                got_over = ast.literal_eval(node.value)
    assert got == {n: i.source for n, i in modules.items()}, "embedded sources do not round-trip"
    assert got_over == overrides, "BUNDLE_OVERRIDES does not round-trip"


def compress_source(text: str) -> str:
    """lzma + base85 self-extracting wrapper around `text` (deterministic for a given liblzma)."""
    blob = lzma.compress(text.encode("utf-8"), preset=9 | lzma.PRESET_EXTREME)
    enc = base64.b85encode(blob).decode("ascii")  # the b85 alphabet has no quote or backslash
    return ("# pgolf bundle, lzma+base85; `pgolf bundle --no-compress` emits the readable source\n"
            "import base64,linecache,lzma\n"
            f's=lzma.decompress(base64.b85decode("{enc}")).decode()\n'
            f'f="{VIRTUAL_ROOT}";linecache.cache[f]=(len(s),None,s.splitlines(True),f);exec(compile(s,f,"exec"))\n')


def code_bytes(path: str | os.PathLike) -> int:
    """Counted code bytes of a bundle: the size of the file itself."""
    return os.path.getsize(path)


# --------------------------------------------------------------------------------------------------
# Building a bundle
# --------------------------------------------------------------------------------------------------


@dataclass
class Bundle:
    cfg: RunConfig
    preset: str
    overrides: dict[str, Any]
    modules: dict[str, ModuleInfo]
    readable: str
    compressed: str

    @property
    def sizes(self) -> dict[str, int]:
        return {"readable": len(self.readable.encode("utf-8")), "compressed": len(self.compressed.encode("utf-8"))}

    def text(self, compress: bool | None = None) -> str:
        """compress None = whichever is smaller."""
        if compress is None:
            compress = self.sizes["compressed"] < self.sizes["readable"]
        return self.compressed if compress else self.readable


def bundle_overrides(cfg: RunConfig) -> tuple[str, dict[str, Any]]:
    """(preset, {dotted key: value}) such that the preset plus these overrides rebuilds `cfg` (run_id
    aside: a label, not a setting, and not part of config_hash)."""

    base = get_preset(cfg.preset)
    over = {k: new for k, (_, new) in diff(cfg, base).items() if k not in ("run_id", "preset")}
    rebuilt = apply_overrides(base, [Override(k, v, "bundle") for k, v in over.items()])
    if config_hash(rebuilt) != config_hash(cfg):  # internal invariant of diff/apply_overrides
        raise AssertionError("bundled preset + overrides do not reproduce the config")
    return cfg.preset, over


def build_bundle(cfg: RunConfig, root: Path | None = None) -> Bundle:
    """Everything of the emitted train_gpt.py for config `cfg` (both forms)."""

    preset, over = bundle_overrides(cfg)
    modules = runtime_closure(_MAIN, root)
    readable = render(modules, preset, over, pgolf.__version__)
    return Bundle(cfg, preset, over, modules, readable, compress_source(readable))


def config_code_bytes(cfg: RunConfig) -> int:
    """Code bytes the submission would count for `cfg`: the size of the train_gpt.py emitted for it
    (the smaller form, as `pgolf bundle` writes by default)."""
    return len(build_bundle(cfg).text().encode("utf-8"))


def run_code_bytes(run_dir: str | os.PathLike) -> int:
    """config_code_bytes of a run directory's config."""

    return config_code_bytes(load_config(run_dir))


def compliance_label(cfg: RunConfig) -> str:
    """From the configured score modes: the reference modes that break the rules are named."""
    problems = []
    modes = set(cfg.score.modes)
    if modes & {"slot", "ttt+slot"} and cfg.score.slot.coupling == "shared":
        problems.append("batch-shared SLOT delta")
    if modes & {"ttt", "ttt+slot"} and cfg.score.ttt.mode == "prequant":
        problems.append("pre-quant TTT on validation tokens")
    return f"NON-COMPLIANT ({'; '.join(problems)})" if problems else "compliant"


def _readme(b: Bundle, sizes: dict[str, int], model_bytes: int | None, run_dir: Path | None) -> str:

    d = diff(b.cfg, get_preset(b.preset))
    d.pop("run_id", None)
    diff_lines = [f"    {k}: {a!r} -> {v!r}" for k, (a, v) in d.items()] or ["    (none: the preset as is)"]
    size_lines = [f"- code: {sizes['code']:,} bytes (train_gpt.py; readable {b.sizes['readable']:,}, "
                  f"lzma+base85 {b.sizes['compressed']:,})"]
    if model_bytes is not None:
        size_lines.append(f"- model: {model_bytes:,} bytes (artifact.pgolf of {run_dir})")
        size_lines.append(f"- total: {sizes['code'] + model_bytes:,} of {b.cfg.budget.artifact_bytes_limit:,} "
                          "decimal bytes")
    return "\n".join([
        f"# pgolf record: preset `{b.preset}`",
        "",
        "`train_gpt.py` is generated by `pgolf bundle` from pgolf's runtime modules: it trains, quantizes and",
        "scores in one process and needs only torch, numpy, sentencepiece and brotli (requirements.txt).",
        "",
        "## Run",
        "",
        "    torchrun --standalone --nproc_per_node=8 train_gpt.py",
        "",
        "with the challenge's variables (`DATA_PATH`, `TOKENIZER_PATH`, `SEED`, `RUN_ID`, ...);",
        "`PGOLF_SECTION__KEY=value` overrides any config key and `PGOLF_PRESET` picks another preset.",
        "Results: `runs/<run_id>/` (log.txt, artifact.pgolf, results.json).",
        "",
        f"## Config: differences from preset `{b.preset}`",
        "",
        *diff_lines,
        "",
        "## Size",
        "",
        *size_lines,
        "",
    ])


def write_record(b: Bundle, out: Path, *, compress: bool | None = None, force: bool = False,
                 run_dir: Path | None = None, name: str = "", author: str = "", github_id: str = "") -> dict:
    """Write the record folder; -> the bundle.json dict."""

    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ConfigError(f"--out {out}: directory exists and is not empty (use --force to overwrite)")
    out.mkdir(parents=True, exist_ok=True)
    text = b.text(compress)
    data = text.encode("utf-8")
    (out / BUNDLE_FILE).write_bytes(data)
    n_code = code_bytes(out / BUNDLE_FILE)
    artifact = run_dir / ARTIFACT if run_dir is not None else None
    model_bytes = artifact.stat().st_size if artifact is not None and artifact.is_file() else None
    total = n_code + model_bytes if model_bytes is not None else None
    limit = b.cfg.budget.artifact_bytes_limit
    meta = {
        "bundle_sha256": hashlib.sha256(data).hexdigest(),
        "code_bytes": n_code,
        "compressed": text is b.compressed and b.compressed != b.readable,
        "sizes": b.sizes,
        "pgolf_version": pgolf.__version__,
        "preset": b.preset,
        "overrides": b.overrides,
        "config_hash": config_hash(b.cfg),
        "modules": list(b.modules),
        "optional_imports": {n: sorted(i.third_party_lazy) for n, i in b.modules.items() if i.third_party_lazy},
        "tooling_in_closure": tooling_in(b.modules),
        "run_dir": str(run_dir) if run_dir is not None else None,
        "model_bytes": model_bytes,
        "total_bytes": total,
        "limit_bytes": limit,
    }
    (out / "bundle.json").write_text(json.dumps(meta, indent=2, default=list) + "\n", encoding="utf-8")
    versions = _versions()
    (out / "requirements.txt").write_text(
        "".join(f"{p}  # bundled with {versions.get(p, '?')}\n" for p in sorted(ALLOWED_THIRD_PARTY)),
        encoding="utf-8")
    submission = {
        "name": name, "author": author, "github_id": github_id,
        "date": datetime.date.today().isoformat(),
        "val_bpb": None,
        "bytes_total": total, "bytes_code": n_code, "bytes_model": model_bytes,
        "blurb": f"pgolf {pgolf.__version__} preset {b.preset}"
                 + (f" with {len(b.overrides)} override(s)" if b.overrides else ""),
        "compliance": compliance_label(b.cfg),
    }
    (out / "submission.json").write_text(json.dumps(submission, indent=2) + "\n", encoding="utf-8")
    (out / "README.md").write_text(_readme(b, {"code": n_code}, model_bytes, run_dir), encoding="utf-8")
    return meta


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for p in ALLOWED_THIRD_PARTY:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    return out


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def cmd_bundle(args) -> int:

    run_dir = Path(args.run_dir) if args.run_dir else None
    if run_dir is not None:
        if not run_dir.is_dir():
            raise ConfigError(f"--run-dir {run_dir}: no such directory")
        if args.sets:
            raise ConfigError("--set applies to --preset bundles; a run dir is bundled with its own config.json")
        cfg = load_config(run_dir)
        if args.preset and args.preset != cfg.preset:
            raise ConfigError(f"--preset {args.preset} contradicts the run's preset {cfg.preset!r} ({run_dir})")
    elif args.preset:
        # The bundler's own environment is not baked in: PGOLF_* variables are read when train_gpt.py runs.
        cfg, _ = resolve(args.preset, args.sets, env={})
    else:
        raise ConfigError("give --run-dir RUN_DIR or --preset NAME")
    b = build_bundle(cfg)
    meta = write_record(b, Path(args.out), compress=args.compress, force=args.force, run_dir=run_dir,
                        name=args.name, author=args.author, github_id=args.github_id)
    s = b.sizes
    print(f"bundle: {len(b.modules)} runtime modules, preset {b.preset}, {len(b.overrides)} override(s), "
          f"config_hash {meta['config_hash'][:16]}")
    print(f"train_gpt.py: readable {s['readable']:,} bytes, lzma+base85 {s['compressed']:,} bytes -> wrote "
          f"{'compressed' if meta['compressed'] else 'readable'}")
    for t, by in meta["tooling_in_closure"].items():
        print(f"warning: tooling module {t} is in the runtime closure (imported by {by})")
    print(f"code_bytes: {meta['code_bytes']}")
    rc = 0
    if meta["model_bytes"] is not None:
        total, limit = meta["total_bytes"], meta["limit_bytes"]
        verdict = (f"ok, {limit - total:,} to spare" if total <= limit
                   else f"INVALID: over budget by {total - limit:,}")
        print(f"total_bytes: {total} = code {meta['code_bytes']:,} + model {meta['model_bytes']:,} "
              f"(limit {limit:,}: {verdict})")
        rc = 0 if total <= limit else 1
    print(f"record: {args.out} ({', '.join(RECORD_FILES)})")
    return rc


def add_bundle_parser(verbs) -> argparse.ArgumentParser:
    """Add the `bundle` verb to the CLI's subparsers."""
    p = verbs.add_parser("bundle", help="emit a challenge record folder with a single-file train_gpt.py")
    p.add_argument("--run-dir", default=None, help="bundle this run's config (and count its artifact.pgolf)")
    p.add_argument("--preset", default=None, help="bundle a preset (without --run-dir)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="with --preset: override a config key in the bundled defaults (repeatable)")
    p.add_argument("--out", required=True, help="record folder to write")
    p.add_argument("--compress", action=argparse.BooleanOptionalAction, default=None,
                   help="lzma+base85 self-extracting train_gpt.py (default: whichever form is smaller)")
    p.add_argument("--force", action="store_true", help="overwrite the files of an existing record folder")
    p.add_argument("--name", default="", help="submission.json name")
    p.add_argument("--author", default="", help="submission.json author")
    p.add_argument("--github-id", default="", help="submission.json github_id")
    p.set_defaults(fn=cmd_bundle)
    return p
