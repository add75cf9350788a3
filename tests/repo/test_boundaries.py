"""No ``Any`` crosses a stage boundary (issue 13): what one layer hands another is typed.

For every name a module imports from another package of tracedep (a class, a function),
its signature and, for a dataclass, its fields are read with ``typing.get_type_hints``;
``Any`` anywhere in them (``dict[str, Any]``, a bare ``Any`` return) is a boundary the
type checker cannot see through.  numpy's own ``Any`` (the shape of ``NDArray``) is not
ours and is not counted.  Helpers used only inside their package are free.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import typing
from collections.abc import Callable

import numpy as np
import pytest
from import_graph import MODULES, top_package


def _crossing() -> dict[tuple[str, str], str]:
    """(module, name) -> one importer in another package."""
    out: dict[tuple[str, str], str] = {}
    for m, p in MODULES.items():
        for node in ast.walk(ast.parse(p.read_text())):
            if (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                    and node.module in MODULES and top_package(node.module) != top_package(m)):
                for a in node.names:
                    out.setdefault((node.module, a.name), m)
    return out


def _has_any(tp: object) -> bool:
    if tp is typing.Any:
        return True
    args = typing.get_args(tp)
    if typing.get_origin(tp) is np.ndarray:
        args = args[1:]  # the shape parameter is numpy's Any
    return any(_has_any(a) for a in args)


def _problems(obj: object) -> list[str]:
    probs: list[str] = []

    def hints(f: Callable[..., object] | type, label: str) -> None:
        try:
            h = typing.get_type_hints(f, localns=_NAMES)
        except Exception as e:  # an annotation that does not resolve is no type at all
            probs.append(f"{label}: unresolvable ({e})")
            return
        probs.extend(f"{label}{k}" for k, v in h.items() if _has_any(v))

    if inspect.isclass(obj):
        if dataclasses.is_dataclass(obj):
            hints(obj, "field ")
        for n, f in inspect.getmembers(obj, inspect.isfunction):
            if n.startswith("_") or f.__qualname__.split(".")[0] != obj.__name__:
                continue
            hints(f, f"{n}(): ")
    elif inspect.isfunction(obj):
        hints(obj, "")
    return probs


CROSSING = _crossing()
# recursive aliases (common.jsonvalue's JSON) name themselves in strings that only
# their own module can resolve: let every annotation see every tracedep module's names
_NAMES: dict[str, object] = {}
for _m in MODULES:
    _NAMES.update(vars(importlib.import_module(_m)))


def test_the_check_sees_boundaries() -> None:
    assert ("tracedep.common.run_manifest", "RunManifest") in CROSSING
    assert _has_any(dict[str, typing.Any]) and not _has_any(dict[str, object])


@pytest.mark.parametrize("key", sorted(CROSSING), ids=lambda k: f"{k[0]}.{k[1]}")
def test_no_any_crosses(key: tuple[str, str]) -> None:
    obj = getattr(importlib.import_module(key[0]), key[1], None)
    probs = _problems(obj) if obj is not None and not inspect.ismodule(obj) else []
    assert not probs, f"{key[0]}.{key[1]} (imported by {CROSSING[key]}): {probs}"
