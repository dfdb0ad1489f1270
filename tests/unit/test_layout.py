"""The shape of the code (docs/DESIGN.md#import-order): imports go one way, runtime never imports tooling,
no import of pgolf's own modules hides inside a function, files stay small, and every source reference
points into the repository. Parsed with `ast`, nothing is imported."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "pgolf"
TESTS = ROOT / "tests"
MAX_LINES = 450

LAYERS: tuple[tuple[str, ...], ...] = (
    ("pgolf", "pgolf.errors", "pgolf.files"),
    ("pgolf.config",),
    ("pgolf.presets",),
    ("pgolf.runtime", "pgolf.telemetry"),
    ("pgolf.data", "pgolf.model", "pgolf.optim"),
    ("pgolf.rundir",),
    ("pgolf.quant", "pgolf.scoring"),
    ("pgolf.train",),
    ("pgolf.pipeline",),
    ("pgolf.tools", "pgolf.__main__"),
)
"""Lower layers never import higher ones; within a layer, imports may go either way but never in a cycle."""
TOOLING = "pgolf.tools"


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(mod: str) -> int:
    best, found = -1, None
    for i, names in enumerate(LAYERS):
        for n in names:
            if (mod == n or mod.startswith(n + ".")) and len(n) > best:
                best, found = len(n), i
    assert found is not None, f"{mod}: in no layer of LAYERS"
    return found


def sources() -> dict[str, tuple[Path, ast.Module]]:
    return {module_name(p): (p, ast.parse(p.read_text(encoding="utf-8"), filename=str(p)))
            for p in sorted(SRC.rglob("*.py"))}


def pgolf_imports(mod: str, tree: ast.Module) -> list[tuple[ast.stmt, str]]:
    """(statement, imported pgolf module) for every import of a pgolf module anywhere in the file."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node, a.name) for a in node.names if a.name.split(".")[0] == "pgolf"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = mod.split(".")
                base = ".".join(pkg[: len(pkg) - node.level + (1 if mod.endswith("__init__") else 0)] + [base])
            if base.split(".")[0] == "pgolf":
                out.append((node, base))
    return out


@pytest.fixture(scope="module")
def graph():
    srcs = sources()
    edges: dict[str, set[str]] = {m: set() for m in srcs}
    local: list[str] = []
    for mod, (path, tree) in srcs.items():
        top = {id(n) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))}
        for node, target in pgolf_imports(mod, tree):
            if id(node) not in top:
                local.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {target} inside a block")
            # `from pgolf.x import y` may import the submodule pgolf.x.y
            names = [target] + [f"{target}.{a.name}" for a in getattr(node, "names", [])]
            for t in names:
                if t in srcs and t != mod:
                    edges[mod].add(t)
    return srcs, edges, local


def test_no_function_local_imports_of_pgolf_modules(graph):
    _, _, local = graph
    assert local == []


def test_imports_never_go_up_the_layer_order(graph):
    _, edges, _ = graph
    up = [f"{m} (layer {layer(m)}) imports {t} (layer {layer(t)})"
          for m, ts in edges.items() for t in ts if layer(t) > layer(m)]
    assert up == []


def test_no_import_cycles(graph):
    _, edges, _ = graph
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t, stack + [t])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    # a package importing its own submodules (re-exports) is not a cycle in the import order
    cycles = [c for c in cycles if not all(x == c[0] or x.startswith(c[0] + ".") for x in c)]
    assert cycles == []


def test_runtime_never_imports_tooling(graph):
    _, edges, _ = graph
    bad = [f"{m} imports {t}" for m, ts in edges.items() if not m.startswith(TOOLING) and m != "pgolf.__main__"
           for t in ts if t.startswith(TOOLING)]
    assert bad == []


def test_every_module_has_a_layer(graph):
    srcs, _, _ = graph
    for m in srcs:
        layer(m)


def test_no_source_file_is_long():
    long = {str(p.relative_to(ROOT)): n for p in SRC.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}


def test_source_references_stay_in_the_repository():
    bad = []
    for p in SRC.rglob("*.py"):
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"\bSTACK(\.md)?\b|\.\./shared|ARCHITECTURE\.md|USERS\.md|FRONTIER\.md|REVIEW\.md", line):
                bad.append(f"{p.relative_to(ROOT)}:{i}: {line.strip()[:100]}")
    assert bad == []


def test_design_references_resolve():
    doc = (ROOT / "docs" / "DESIGN.md").read_text(encoding="utf-8")
    anchors = set(re.findall(r'<a id="([a-z0-9-]+)"></a>', doc))
    missing = []
    for p in list(SRC.rglob("*.py")) + [ROOT / "README.md"]:
        text = p.read_text(encoding="utf-8")
        for a in re.findall(r"DESIGN\.md#([a-z0-9-]+)", text):
            if a not in anchors:
                missing.append(f"{p.relative_to(ROOT)}: #{a}")
        # "docs/DESIGN.md#a" followed by ", #b" names further anchors of the same document
        for chain in re.findall(r"DESIGN\.md#[a-z0-9-]+((?:,\s*#[a-z0-9-]+)+)", text):
            missing += [f"{p.relative_to(ROOT)}: {a}" for a in re.findall(r"#([a-z0-9-]+)", chain) if a not in anchors]
    assert missing == []


def test_tests_import_helpers_not_other_tests():
    bad = []
    for p in TESTS.rglob("*.py"):
        if "helpers" in p.relative_to(TESTS).parts:
            continue
        tree = ast.parse(p.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            mod = node.module if isinstance(node, ast.ImportFrom) else None
            if mod and mod.split(".")[0] == "tests" and not mod.startswith("tests.helpers"):
                bad.append(f"{p.relative_to(ROOT)}:{node.lineno} imports {mod}")
    assert bad == []
