"""Modules over 600 lines, and functions over 80 lines that do not say why they are long.

A module should hold one job and a function one step of it (issue 13).  Some functions
are long for a reason: a hot loop that must not pay for a call per event, one table of
cases.  A comment ``# long: <why>`` on the ``def`` line or the line above it (above
its decorators, if it has any) says so, and the function is not reported.  Nested
functions count in their own length and in that of the function around them.

Usage: ``python tools/sizes.py [PATH ...]``: files or folders, relative to the checkout;
by default the package's source as tools/lint.py type-checks it (tests/ and bench/
are not checked).  One line per finding, ``path:line: what``.
Exit status: 0 nothing to report, 1 findings, 2 a path that does not exist or a file
that does not parse.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULE_LINES = 600
FUNCTION_LINES = 80
MARK = "# long:"
# what tools/lint.py type-checks, less what is not ours (the test drivers' helper scripts)
DEFAULT_PATHS = ("__init__.py", "errors.py", "cli.py", "common", "kimage", "vm", "tracer",
                 "analysis", "reports", "nightly", "tools")
SKIP_PARTS = frozenset({"drivers", "data", "__pycache__", ".venv", "build"})


@dataclass(frozen=True)
class Finding:
    path: str  # relative to the checkout, with "/"
    line: int
    kind: str  # "module" or "function"
    name: str  # the module's path, or the function's qualified name
    lines: int

    @property
    def key(self) -> str:
        """``path`` for a module, ``path:qualname`` for a function."""
        return self.path if self.kind == "module" else f"{self.path}:{self.name}"

    def __str__(self) -> str:
        if self.kind == "module":
            return f"{self.path}:1: module has {self.lines} lines (over {MODULE_LINES})"
        return (f"{self.path}:{self.line}: function {self.name} has {self.lines} lines "
                f"(over {FUNCTION_LINES}) and no '{MARK}' comment saying why")


def _functions(tree: ast.AST) -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """(qualified name, node) of every function, nested ones and methods included."""
    todo: list[tuple[str, ast.AST]] = [("", tree)]
    while todo:
        prefix, node = todo.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    yield name, child
                todo.append((f"{name}.", child))
            else:
                todo.append((prefix, child))


def _excused(lines: list[str], fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    first = min([fn.lineno, *(d.lineno for d in fn.decorator_list)])
    # 1-based line numbers: the def line, the line above it, the line above its decorators
    wanted = {fn.lineno, fn.lineno - 1, first - 1}
    return any(1 <= n <= len(lines) and MARK in lines[n - 1] for n in wanted)


def check_file(path: Path, root: Path = ROOT) -> list[Finding]:
    text = path.read_text(encoding="utf-8")
    rel = path.resolve().relative_to(root.resolve()).as_posix()
    lines = text.splitlines()
    out: list[Finding] = []
    if len(lines) > MODULE_LINES:
        out.append(Finding(rel, 1, "module", rel, len(lines)))
    for name, fn in _functions(ast.parse(text, filename=str(path))):
        size = (fn.end_lineno or fn.lineno) - fn.lineno + 1
        if size > FUNCTION_LINES and not _excused(lines, fn):
            out.append(Finding(rel, fn.lineno, "function", name, size))
    return sorted(out, key=lambda f: (f.path, f.line))


def python_files(paths: Iterable[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if p.is_file():
            out.append(p)
        elif p.is_dir():
            out += [f for f in sorted(p.rglob("*.py"))
                    if not SKIP_PARTS & set(f.relative_to(p).parts[:-1])]
        else:
            raise FileNotFoundError(p)
    return out


def check(paths: Iterable[str] = DEFAULT_PATHS, root: Path = ROOT) -> list[Finding]:
    """Every finding under ``paths`` (relative to ``root``), in path and line order."""
    out: list[Finding] = []
    for f in python_files(root / p for p in paths):
        out += check_file(f, root)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="*", help="files or folders (default: the package source)")
    a = ap.parse_args(argv)
    try:
        findings = check(a.paths or DEFAULT_PATHS)
    except FileNotFoundError as e:
        print(f"sizes: no such file or folder: {e}", file=sys.stderr)
        return 2
    except SyntaxError as e:
        print(f"sizes: {e.filename}:{e.lineno}: does not parse: {e.msg}", file=sys.stderr)
        return 2
    for f in findings:
        print(f)
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
