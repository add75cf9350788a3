"""The layers of tracedep import only downward (README, "Layers"; docs/DESIGN.md).

Data flows one way, vm → tracer → analysis → reports, and what they share sits below
them all.  A module may import its own package and any lower layer, never a higher one;
inside a package the imports form no cycle (a lazy import inside a function counts:
it is a cycle all the same, only hidden).  ``analysis`` is offline: it never reaches the
guest's layer (``vm``: downloads, builds, QEMU), and ``reports`` only renders analyses.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from import_graph import (
    FORBIDDEN,
    LAYERS,
    LEVEL,
    MODULES,
    PACKAGE,
    ROOT,
    imports_of,
    known_module,
    top_package,
)


def test_every_package_has_a_layer() -> None:
    tops = {top_package(m) for m in MODULES if m != PACKAGE}
    assert tops <= set(LEVEL), f"give these a layer in LAYERS: {sorted(tops - set(LEVEL))}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != PACKAGE))
def test_imports_go_down(module: str) -> None:
    own = top_package(module)
    bad = []
    for line, target in imports_of(MODULES[module]):
        t = known_module(target)
        if t is None or t == PACKAGE:
            continue
        top = top_package(t)
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
        deps = {known_module(t) for _, t in imports_of(p)}
        graph[m] = {d for d in deps if d and d != m and d != PACKAGE
                    and top_package(d) == top_package(m)
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
    assert (2, "tracedep.reports.text") in imports_of(bad)
    assert LEVEL[top_package("tracedep.reports.text")] > LEVEL["analysis"]
