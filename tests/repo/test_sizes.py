"""No module over 600 lines, no function over 80 without a ``# long:`` reason (tools/sizes.py)."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]

# none: a module is its path, a function path:qualified name; a function that must stay
# long says why with ``# long:`` instead
ALLOWED: set[str] = set()


def _sizes() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tracedep_tools_sizes",
                                                  ROOT / "tools" / "sizes.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is made
    spec.loader.exec_module(mod)
    return mod


sizes = _sizes()


def test_the_repository_keeps_to_the_limits() -> None:
    found = [f for f in sizes.check() if f.key not in ALLOWED]
    assert not found, "\n".join(str(f) for f in found)


def test_long_module_and_unexplained_long_function_are_found(tmp_path: Path) -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(sizes.FUNCTION_LINES))
    src = (f"def short():\n    return 1\n\n\ndef too_long():\n{body}\n\n"
           f"class K:\n    def method(self):\n{textwrap.indent(body, '    ')}\n\n"
           f"def inner_too():\n    def helper():\n{textwrap.indent(body, '    ')}"
           f"    return helper\n")
    src += "\n" * (sizes.MODULE_LINES + 1 - src.count("\n"))
    (tmp_path / "m.py").write_text(src)
    got = {(f.kind, f.name) for f in sizes.check(["m.py"], tmp_path)}
    assert got == {("module", "m.py"), ("function", "too_long"), ("function", "K.method"),
                   ("function", "inner_too"), ("function", "inner_too.helper")}
    assert sizes.main([str(tmp_path / "nowhere")]) == 2


def test_a_long_comment_excuses_a_function(tmp_path: Path) -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(sizes.FUNCTION_LINES))
    src = (f"def on_def_line():  # long: one table\n{body}\n\n"
           f"# long: a hot loop, no call per event\ndef line_above():\n{body}\n\n"
           f"# long: a hot loop\n@staticmethod\ndef above_decorator():\n{body}\n\n"
           f"def not_excused():\n    # long: too late, inside the body\n{body}")
    (tmp_path / "m.py").write_text(src)
    got = [f.name for f in sizes.check(["m.py"], tmp_path)]
    assert got == ["not_excused"]
