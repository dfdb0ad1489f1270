"""The runtime closure: which of pgolf's modules the bundled train_gpt.py needs.

Computed, not listed: the imports of the entry point (bundle_config() and main()) and, transitively, every
`import pgolf.x` / `from pgolf.x import y` in the modules reached (function-local imports included), found
with `ast`. A runtime module that imports a third-party package other than torch, numpy, sentencepiece and
brotli at module level fails the bundle (function-local imports of optional packages such as zstandard or
tqdm are recorded in bundle.json, not refused).
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pgolf
from pgolf.config import ConfigError

ALLOWED_THIRD_PARTY = frozenset({"torch", "numpy", "sentencepiece", "brotli"})
"""The challenge environment: the only packages a runtime module may import at module level."""

TOOLING_PREFIX = "pgolf.tools"
"""Tooling lives in this package; runtime modules never import it (a test pins that), so the runtime
closure below never contains it. A tooling module found in the closure anyway is named in a warning."""


class BundleError(ConfigError):
    """The runtime closure cannot be bundled (a forbidden import, a missing module, a failed check)."""


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
