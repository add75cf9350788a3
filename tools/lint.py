"""`make lint`: ruff and mypy, with the same result whatever this checkout's folder is called.

The repository root *is* the package ``tracedep`` (pyproject.toml maps ``tracedep`` to ``.``,
``tracedep.vm`` to ``vm`` ...), and the code imports itself as ``tracedep.*``.  Neither tool
can see that mapping on its own: mypy names the files after the checkout's folder (it has an
``__init__.py``, so ``<folder>.vm.kernel``) and does not run the setuptools editable finder
(an import hook in site-packages), so ``tracedep.*`` resolved only in a folder named
``tracedep``, or to a sibling folder of that name.  Here mypy runs in a fresh temporary
folder holding one symlink ``tracedep -> <this checkout>``, with that folder as its only
package base: every module is ``tracedep.<...>`` and ``tracedep.*`` is this checkout's files.
ruff is told ``known-first-party = ["tracedep"]`` in pyproject.toml.

Both run from the interpreter that runs this script (``.venv/bin/python`` under make).
Paths in mypy's messages are given relative to the checkout, as ruff's are.
Exit status: 0 clean, 1 findings (either tool), 2 usage or tool failure.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "tracedep"
# what mypy checks, relative to the checkout (tests/ and bench/ are not type-checked)
MYPY_TARGETS = ("common", "kimage", "vm", "tracer", "analysis", "reports", "nightly",
                "cli.py", "errors.py", "tools")


def run_ruff(root: Path) -> int:
    return subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=root).returncode


def run_mypy(root: Path, cache_dir: Path | None = None) -> int:
    cache = cache_dir or root / ".mypy_cache"
    with tempfile.TemporaryDirectory(prefix="tracedep-lint-") as base:
        os.symlink(root, Path(base, PACKAGE), target_is_directory=True)
        cmd = [sys.executable, "-m", "mypy",
               "--config-file", str(root / "pyproject.toml"),
               "--cache-dir", str(cache),
               "--explicit-package-bases",
               "--no-error-summary",
               *(f"{PACKAGE}/{t}" for t in MYPY_TARGETS)]
        # the symlink's folder is the only package base: a MYPYPATH of the caller's could
        # supply another tracedep (a sibling clone, an installed copy) first
        env = {**os.environ, "MYPYPATH": base}
        proc = subprocess.run(cmd, cwd=base, env=env, capture_output=True, text=True)
    prefix = PACKAGE + "/"
    for line in proc.stdout.splitlines():
        sys.stdout.write((line[len(prefix):] if line.startswith(prefix) else line) + "\n")
    sys.stdout.flush()
    sys.stderr.write(proc.stderr)
    return proc.returncode


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=("ruff", "mypy"), help="run one of the two tools")
    ap.add_argument("--mypy-cache-dir", type=Path, help="default: .mypy_cache in the checkout")
    a = ap.parse_args(argv)
    rcs = []
    if a.only in (None, "ruff"):
        rcs.append(run_ruff(ROOT))
    if a.only in (None, "mypy"):
        rcs.append(run_mypy(ROOT, a.mypy_cache_dir))
    if any(rc not in (0, 1) for rc in rcs):
        return 2
    return max(rcs)


if __name__ == "__main__":
    sys.exit(main())
