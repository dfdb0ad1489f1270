"""Docstrings and comments out of a module's source, every line kept: what the bundle embeds by default.

Removed: module, class and function docstrings; attribute docstrings (a string expression statement
right after an assignment in a module or class body); every comment. The removed text becomes blank
lines, so line N of the stripped source is line N of the repository's file (a traceback from the bundle
names the repository's line numbers), and code keeps its columns too (except after a `"doc"; ` on the
same line, which is removed with its `;`). A class or function body left empty gets `...` (a module body
may be empty). Nothing else changes: `check_stripped` parses both and requires the stripped AST to equal
the original's minus those docstrings, node for node and line for line; the bundler runs it on every
module it embeds.

Only __doc__ is lost (None), as under `python -OO`; runtime code never reads it.
"""

from __future__ import annotations

import ast
import functools
import io
import tokenize

from pgolf.tools.bundle.closure import BundleError

ASSIGNMENTS = (ast.Assign, ast.AnnAssign, ast.AugAssign)
"""A string statement right after one of these, in a module or class body, is an attribute docstring."""

_SCOPES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


class StripError(BundleError):
    """A source the stripper cannot handle, or whose stripped form would not be the same code."""


def _is_str(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)


def docstring_nodes(tree: ast.Module) -> list[tuple[ast.Expr, ast.AST]]:
    """(docstring statement, the module / class / function whose body holds it), in source order."""
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, _SCOPES):
            continue
        body = node.body
        if body and _is_str(body[0]):
            out.append((body[0], node))
        if isinstance(node, (ast.Module, ast.ClassDef)):
            out += [(s, node) for prev, s in zip(body, body[1:]) if isinstance(prev, ASSIGNMENTS) and _is_str(s)]
    return sorted(out, key=lambda p: (p[0].lineno, p[0].col_offset))


def _by_scope(tree: ast.Module) -> list[tuple[ast.AST, list[ast.Expr], bool]]:
    """(scope, its docstring statements, whether its body becomes empty: a class or function then gets `...`;
    a module body may be empty) for every scope holding docstrings."""
    found: dict[int, tuple[ast.AST, list[ast.Expr]]] = {}
    for stmt, scope in docstring_nodes(tree):
        found.setdefault(id(scope), (scope, []))[1].append(stmt)
    return [(scope, stmts, len(stmts) == len(scope.body) and not isinstance(scope, ast.Module))
            for scope, stmts in found.values()]


def without_docstrings(source: str, filename: str = "<source>") -> ast.Module:
    """`source`'s AST minus its docstrings; a class or function body left empty holds `...` where its
    docstring began. The AST the stripped source must parse to."""
    tree = ast.parse(source, filename=filename)
    for scope, stmts, emptied in _by_scope(tree):
        if emptied:
            first = stmts[0]
            pos = {"lineno": first.lineno, "col_offset": first.col_offset,
                   "end_lineno": first.lineno, "end_col_offset": first.col_offset + 3}
            scope.body = [ast.Expr(ast.Constant(..., **pos), **pos)]
        else:
            gone = {id(s) for s in stmts}
            scope.body = [s for s in scope.body if id(s) not in gone]
    return tree


def _shape(node):
    """The node's type, line and fields, recursively (ast.dump plus each node's line: the columns and end
    positions are left out, as they move where a docstring's line held code too)."""
    if isinstance(node, ast.AST):
        return (type(node).__name__, getattr(node, "lineno", None), *(_shape(getattr(node, f, None)) for f in node._fields))
    if isinstance(node, list):
        return [_shape(x) for x in node]
    return repr(node)


def _lines(source: str) -> list[str]:
    # Split on "\n" only, as the tokenizer does (str.splitlines also splits on \f, \x1c, \u2028, ...).
    return io.StringIO(source).readlines()


def _chars(lines: list[str], lineno: int, byte_col: int) -> int:
    """ast's UTF-8 byte column on line `lineno` (1-based) as a character column."""
    return len(lines[lineno - 1].encode("utf-8")[:byte_col].decode("utf-8"))


def _docstring_edit(lines: list[str], stmt: ast.Expr, sole: bool, filename: str) -> tuple[int, int, int, int, str]:
    """(line, col, end line, end col, replacement) removing docstring statement `stmt`."""
    l1, l2 = stmt.lineno, stmt.end_lineno or stmt.lineno
    c1, c2 = _chars(lines, l1, stmt.col_offset), _chars(lines, l2, stmt.end_col_offset or 0)
    before, after = lines[l1 - 1][:c1], lines[l2 - 1][c2:]
    blank = "\n" * (l2 - l1)
    rest = after.lstrip(" \t\f")
    if rest.startswith("\\"):
        raise StripError(f"{filename}:{l2}: a line continuation after a docstring")
    alone = not before.strip()  # the docstring starts its line (else: after `def f():` or `x = 1;`)
    if rest.startswith(";"):  # `"doc"; more code`: the `;` goes with the docstring
        follow = rest[1:].lstrip(" \t\f")
        c2 += len(after) - len(follow)
        if follow not in ("", "\n") and not follow.startswith("#"):  # the code stays on its line
            if l1 == l2:
                return l1, c1, l2, c2, ""
            if not alone and not before.rstrip().endswith(";"):
                raise StripError(f"{filename}:{l1}: a multi-line docstring between a header and code on one line")
            return l1, 0 if alone else c1, l2, c2, blank + before[: len(before) - len(before.lstrip(" \t\f"))]
    if sole:
        return l1, c1, l2, c2, "..." + blank
    return l1, 0 if alone else c1, l2, c2, blank  # a line left blank holds no indentation either


def _comment_edits(source: str) -> list[tuple[int, int, int, int, str]]:
    """Every comment, with the blanks between it and the code before it on its line."""
    edits = []
    prev = (1, 0)
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                r, (er, ec) = tok.start[0], tok.end
                edits.append((r, prev[1] if prev[0] == r else 0, er, ec, ""))
            if tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.DEDENT):
                prev = tok.end
    except (tokenize.TokenError, SyntaxError) as e:  # pragma: no cover - ast.parse accepted it first
        raise StripError(f"cannot tokenize: {e}") from e
    return edits


def strip_source(source: str, filename: str = "<source>") -> str:
    """`source` without docstrings and comments, with the same lines (see the module docstring)."""
    if "\r" in source:
        raise StripError(f"{filename}: carriage returns (the stripper keeps lines split on newlines only)")
    tree = ast.parse(source, filename=filename)
    lines = _lines(source)
    edits = [_docstring_edit(lines, s, emptied, filename) for _, stmts, emptied in _by_scope(tree) for s in stmts]
    edits += _comment_edits(source)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    out, pos = [], 0
    for l1, c1, l2, c2, repl in sorted(edits):
        a, b = starts[l1 - 1] + c1, starts[l2 - 1] + c2
        if a < pos:  # a comment inside or right after a docstring's removal (`("a"  # x` ... or `"a";  # x`)
            if repl:
                raise StripError(f"{filename}:{l1}: overlapping removals")
            if b <= pos:
                continue
            a = pos
        out += [source[pos:a], repl]
        pos = b
    out.append(source[pos:])
    return "".join(out)


def check_stripped(original: str, stripped: str, filename: str = "<source>") -> None:
    """Raise StripError unless `stripped` has as many lines as `original` and parses to the original's AST
    minus its docstrings, with every node on the same line."""
    n_orig, n_new = original.count("\n"), stripped.count("\n")
    if n_orig != n_new:
        raise StripError(f"{filename}: stripping changed the line count ({n_orig} -> {n_new})")
    try:
        got = ast.parse(stripped, filename=filename)
    except SyntaxError as e:
        raise StripError(f"{filename}: the stripped source does not parse: {e}") from e
    if _shape(got) != _shape(without_docstrings(original, filename)):
        raise StripError(f"{filename}: the stripped source is not the same code on the same lines")


@functools.lru_cache(maxsize=1024)
def strip_checked(source: str, filename: str = "<source>") -> str:
    """strip_source, verified by check_stripped (cached: a bundle is built more than once per process)."""
    out = strip_source(source, filename)
    check_stripped(source, out, filename)
    return out
