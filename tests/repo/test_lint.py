"""`make lint` type-checks the project's own interfaces, whatever the checkout's folder is called.

The repository root is the package ``tracedep``; mypy used to resolve ``tracedep.*`` only in
a folder named ``tracedep`` (elsewhere every cross-module import was Any, or a sibling
folder ``tracedep`` was taken for it).  These tests lint a copy of the tracked files in a
folder of another name, next to a decoy ``tracedep`` folder, with the entry point the
Makefile uses (tools/lint.py) and this venv's ruff and mypy.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLANTED = "reports/planted_lint_error.py"


def _tracked_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: no tracked files to copy")
    return [f for f in out.decode().split("\0") if f]


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    parent = tmp_path_factory.mktemp("lint")
    copy = parent / "td-copy"
    for rel in _tracked_files():
        src = ROOT / rel
        if not src.is_file():  # deleted in the work tree, not yet committed
            continue
        dst = copy / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    # a decoy: another "tracedep" beside the checkout, whose machine_for takes anything
    decoy = parent / "tracedep"
    (decoy / "common").mkdir(parents=True)
    (decoy / "__init__.py").write_text("")
    (decoy / "common" / "__init__.py").write_text("")
    (decoy / "common" / "machines.py").write_text("def machine_for(arch: object) -> object: ...\n")
    return copy


def lint(copy: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(copy / "tools" / "lint.py"),
                           "--mypy-cache-dir", str(copy.parent / "mypy-cache")],
                          cwd=copy, capture_output=True, text=True, timeout=600)


def test_makefile_lints_through_the_driver() -> None:
    recipe = (ROOT / "Makefile").read_text().split("\nlint:", 1)[1].split("\n\n", 1)[0]
    assert "tools/lint.py" in recipe
    assert "mypy" not in recipe.replace("tools/lint.py", "")


def test_lint_passes_then_catches_a_cross_module_type_error(checkout: Path) -> None:
    clean = lint(checkout)
    assert clean.returncode == 0, clean.stdout + clean.stderr

    # machine_for(arch: str) in common/machines.py, called with an int from another module:
    # seen only if tracedep.common.machines is this checkout's file (not Any, not the decoy)
    (checkout / PLANTED).write_text(textwrap.dedent("""\
        from tracedep.common.machines import machine_for

        MACHINE = machine_for(64)
        """))
    try:
        bad = lint(checkout)
    finally:
        (checkout / PLANTED).unlink()
    assert bad.returncode == 1, bad.stdout + bad.stderr
    errors = [ln for ln in bad.stdout.splitlines() if ": error:" in ln]
    assert errors, bad.stdout + bad.stderr
    # paths relative to the checkout, as ruff gives them; nothing else is wrong
    assert all(ln.startswith(f"{PLANTED}:3: error:") for ln in errors), bad.stdout
    assert '"machine_for" has incompatible type "int"; expected "str"' in errors[0]
