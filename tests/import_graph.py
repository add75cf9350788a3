"""tracedep's own import graph, read from the source (ast): which module imports which.

Shared by tests/repo/test_layers.py (imports only downward) and
tests/repo/test_boundaries.py (no Any across a boundary).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "tracedep"

# bottom first; a name is a top-level package folder or a top-level module
LAYERS: list[tuple[str, ...]] = [
    ("errors", "common"),
    ("kimage",),
    ("vm",),
    ("tracer",),
    ("analysis",),
    ("reports",),
    ("nightly",),
    ("options", "cli"),
]
LEVEL = {name: i for i, names in enumerate(LAYERS) for name in names}
# beyond the order: what each stage must not use at all
FORBIDDEN = {
    "analysis": {"vm", "tracer.session", "tracer.control", "tracer.channels"},
    "reports": {"vm", "kimage", "tracer"},
}
SKIP_DIRS = {"tests", "bench", "tools", "build", "drivers", "guest", ".venv", "scenarios"}


def find_modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        rel = p.relative_to(ROOT)
        if SKIP_DIRS & set(rel.parts[:-1]) or any(s.startswith(".") for s in rel.parts):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join([PACKAGE, *parts])] = p
    return out


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every tracedep import, wherever it stands in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == PACKAGE:
                found += [(node.lineno, f"{PACKAGE}.{a.name}") for a in node.names]
            elif node.module.startswith(PACKAGE + "."):
                found += [(node.lineno, node.module)]
                found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names
                      if a.name.startswith(PACKAGE + ".")]
    return found


MODULES = find_modules()


def top_package(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def known_module(module: str) -> str | None:
    """The module itself, or the package a ``from package import name`` names."""
    while module and module not in MODULES:
        module = module.rpartition(".")[0]
    return module or None
