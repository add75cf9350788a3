"""Real run directories for the KCIDB and SARIF tests (tests/reports/test_kcidb.py,
test_sarif.py, tests/cli/test_exports_cli.py).

* :func:`bundled_run_dir`: the recorded analysis of a real run of the bundled drivers
  (``data/analysis/bundled``: ``findings.json``, ``analysis.json``) as a run directory,
  its source paths (``/work/main/vm/drivers/...`` where it was made) moved to a folder
  of the test's, made a git work tree with one commit (``git=True``);
* :func:`tiny_analysed_run`: the recorded tiny run (``data/traces/tiny``: a manifest and
  a real trace) analysed here, as ``tracedep analyze`` does it.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from conftest import tiny_run_copy

DATA = Path(__file__).parent / "data"
BUNDLED = DATA / "analysis" / "bundled"
RECORDED_SRC = "/work/main/"  # where the bundled run's drivers were (data/analysis/bundled)
SARIF_SCHEMA = DATA / "sarif" / "sarif-schema-2.1.0.json"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c",
                           "user.email=t@example.org", "-c", "commit.gpgsign=false", *args],
                          check=True, capture_output=True, text=True, timeout=60).stdout.strip()


def bundled_run_dir(tmp: Path, name: str = "run", git_tree: bool = True) -> Path:
    """The recorded bundled analysis as the run directory ``tmp/name``; its drivers'
    sources are under ``tmp/src`` (a git work tree when ``git_tree``)."""
    src = tmp / "src"
    run = tmp / name
    run.mkdir(parents=True)
    for f in ("findings.json", "analysis.json"):
        (run / f).write_text((BUNDLED / f).read_text().replace(RECORDED_SRC, f"{src}/"))
    analysis = json.loads((run / "analysis.json").read_text())
    if not src.exists():
        for m in analysis["run"]["modules"]:
            d = Path(m["src_dir"])
            d.mkdir(parents=True)
            (d / f"{m['name']}.c").write_text(f"/* {m['name']} */\n")
        if git_tree:
            git(src, "init", "-q", "-b", "main")
            git(src, "add", "-A")
            git(src, "commit", "-q", "-m", "drivers")
    return run


def edit_json(path: Path, change: Any) -> None:
    """Rewrite a JSON file through ``change(data)`` (which edits it in place)."""
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def tiny_analysed_run(tmp: Path) -> Path:
    """The recorded tiny run, analysed (without DWARF) into its own folder."""
    from tracedep.cli import main

    d = tiny_run_copy(tmp)
    assert main(["analyze", str(d), "--no-dwarf"]) == 0
    return d
