"""The layers of tracedep import only downward (README, "Layers"; docs/DESIGN.md).

Data flows one way, vm → tracer → analysis → reports, and what they share sits below
them all.  A module may import its own package and any lower layer, never a higher one;
inside a package the imports form no cycle (a lazy import inside a function counts:
it is a cycle all the same, only hidden).  ``analysis`` is offline: it never reaches the
guest's layer (``vm``: downloads, builds, QEMU), and ``reports`` only renders analyses.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
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


def _modules() -> dict[str, Path]:
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


def _imports(path: Path) -> list[tuple[int, str]]:
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


MODULES = _modules()


def _top(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def _known(module: str) -> str | None:
    """The module itself, or the package a ``from package import name`` names."""
    while module and module not in MODULES:
        module = module.rpartition(".")[0]
    return module or None


def test_every_package_has_a_layer() -> None:
    tops = {_top(m) for m in MODULES if m != PACKAGE}
    assert tops <= set(LEVEL), f"give these a layer in LAYERS: {sorted(tops - set(LEVEL))}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != PACKAGE))
def test_imports_go_down(module: str) -> None:
    own = _top(module)
    bad = []
    for line, target in _imports(MODULES[module]):
        t = _known(target)
        if t is None or t == PACKAGE:
            continue
        top = _top(t)
        where = f"{MODULES[module].relative_to(ROOT)}:{line} imports {t}"
        if LEVEL[top] > LEVEL[own]:
            bad.append(f"{where} (layer {top} is above {own})")
        for f in FORBIDDEN.get(own, ()):
            if t == f"{PACKAGE}.{f}" or t.startswith(f"{PACKAGE}.{f}."):
                bad.append(f"{where} ({own} must not use {f})")
    assert not bad, "\n".join(bad)


def test_no_cycle_inside_a_package() -> None:
    graph: dict[str, set[str]] = {}
    for m, p in MODULES.items():
        deps = {_known(t) for _, t in _imports(p)}
        graph[m] = {d for d in deps if d and d != m and d != PACKAGE and _top(d) == _top(m)
                    and not m.startswith(d + ".") and not d.startswith(m + ".")}
    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                cycles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "\n".join(cycles)


def test_readme_states_the_order() -> None:
    readme = (ROOT / "README.md").read_text()
    order = " → ".join("/".join(names) for names in LAYERS)
    assert order in readme, f"README.md should state the layers as: {order}"


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """The test above would pass on a tree it cannot read: prove it reads one."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from tracedep.reports.text import render_text\n")
    assert (2, "tracedep.reports.text") in _imports(bad)
    assert LEVEL[_top("tracedep.reports.text")] > LEVEL["analysis"]
