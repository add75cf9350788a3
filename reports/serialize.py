"""A run's analysis on disk, and every report made from it.

Files of a run directory written here::

    findings.json          list of Finding.to_json(), the contract scripts read
    analysis.json          classes, edges, trace health and the run summary
    report.txt             the lockdep-style text report
    index.html             run summary and every finding
    drivers/<driver>.html  one page per driver

    outputs.json           the files above that tracedep wrote here (the ledger)

``findings.json`` and ``analysis.json`` are one analysis: ``analysis_version`` in
``analysis.json`` (and in the ledger) is the version of both.  A minor version
adds fields a reader may ignore; a major version changes them, and the previous
major version is upgraded when read (reports.upgrade).  Version 2.0: typed
``health`` and ``run``; each witness has a ``kind``, the lock it was ``holding``
(a dependency's) and its ``context`` as a record, beside its ``role`` in words.

The whole set is written into a staging folder inside the run directory first
and only then renamed into place, file by file: a failure while writing (a full
disk) leaves the previous set untouched, and a crash during the renames leaves
each file old or new, never half.  tracedep replaces or deletes only files its
ledger lists (or, in a run folder from before the ledger, files of the names
above); any other file in the way is an error, and no path through a symbolic
link is written or deleted.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tracedep.analysis.findings import Analysis, ClassStats, Edge, Finding
from tracedep.analysis.health import Health
from tracedep.analysis.run_summary import RunSummary
from tracedep.common.files import atomic_write
from tracedep.common.jsonvalue import Fields
from tracedep.errors import InputError
from tracedep.reports.upgrade import upgrade as upgrade_v1

ANALYSIS_VERSION = "2.0"  # 2.0: typed health and run, witness kinds and contexts
FINDINGS_FILE = "findings.json"
ANALYSIS_FILE = "analysis.json"
REPORT_FILE = "report.txt"
INDEX_FILE = "index.html"
DRIVERS_DIR = "drivers"
OUTPUTS_FILE = "outputs.json"
OUTPUTS_VERSION = 2  # 2: the ledger names the analysis version of the files
_TOP_FILES = frozenset({FINDINGS_FILE, ANALYSIS_FILE, REPORT_FILE, INDEX_FILE})


def analysis_to_json(a: Analysis) -> dict[str, Any]:
    """The whole analysis as JSON-ready data (``findings`` is ``findings.json``)."""
    return {
        "analysis_version": ANALYSIS_VERSION,
        "findings": [f.to_json() for f in a.findings],
        "classes": [c.to_json() for c in a.classes],
        "edges": [e.to_json() for e in a.edges],
        "health": a.health.to_json(),
        "run": a.run.to_json(),
    }


def as_current(d: dict[str, Any]) -> dict[str, Any]:
    """An analysis of any version this tracedep reads, as the current version."""
    version = str(d.get("analysis_version", "1.0"))  # without one: version 1's shape
    major = version.split(".")[0]
    if major == "1":
        return upgrade_v1(d)
    if major != ANALYSIS_VERSION.split(".")[0]:
        raise InputError(f"analysis version {version} is not supported "
                         f"(this tracedep reads {ANALYSIS_VERSION} and 1.x)")
    return d


def analysis_from_json(d: dict[str, Any]) -> Analysis:
    """Inverse of :func:`analysis_to_json`, an older version upgraded first; raises
    ``InputError`` on a foreign version or a malformed file."""
    try:
        f = Fields(as_current(d), "analysis")
        return Analysis(
            findings=[Finding.from_json(x) for x in f.objs("findings")],
            classes=[ClassStats.from_json(x) for x in f.objs("classes")],
            edges=[Edge.from_json(x) for x in f.objs("edges")],
            health=Health.from_json(f.obj("health")),
            run=RunSummary.from_json(f.obj("run")),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"malformed analysis: {type(e).__name__}: {e}") from None


def _dumps(data: Any, sort_keys: bool = False) -> str:
    # analysis.json keeps insertion order: histogram buckets are ordered by it
    return json.dumps(data, indent=2, sort_keys=sort_keys) + "\n"


def render_all(a: Analysis, generated: str | None = None) -> dict[str, str]:
    """Every file of a run's outputs, by path relative to the run directory."""
    from tracedep.reports import html, text

    d = analysis_to_json(a)
    findings: list[Any] = d.pop("findings")
    out = {FINDINGS_FILE: _dumps(findings, sort_keys=True), ANALYSIS_FILE: _dumps(d),
           REPORT_FILE: text.render_text(a, generated=generated)}
    out.update(html.render_site(a, generated=generated))
    return out


def write_run_outputs(run_dir: Path | str, a: Analysis, generated: str | None = None) -> None:
    """Write findings.json, analysis.json, report.txt, index.html and the driver pages.

    Everything is rendered and written to a staging folder before anything in the
    run directory changes (module docstring); driver pages of an earlier rendering
    that this one has not are removed, nothing else is.
    """
    run_dir = Path(run_dir)
    if generated is None:
        generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    files = render_all(a, generated)
    if run_dir.is_symlink() or (run_dir.exists() and not run_dir.is_dir()):
        raise InputError(f"--out {run_dir}: not a folder")
    run_dir.mkdir(parents=True, exist_ok=True)
    owned = _owned(run_dir)
    drivers = run_dir / DRIVERS_DIR
    if drivers.is_symlink() or (drivers.exists() and not drivers.is_dir()):
        raise InputError(f"{drivers}: not a folder of tracedep's (a symbolic link or a file)")
    for rel in files:
        p = run_dir / rel
        if p.is_symlink() or (p.exists() and (rel not in owned or not p.is_file())):
            raise InputError(f"{p} is in the way: tracedep did not write it; "
                             f"choose another --out, or move it")
    stage = run_dir / f".tracedep-new-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        (stage / DRIVERS_DIR).mkdir(parents=True)
        for rel, content in files.items():
            atomic_write(stage / rel, content)
        drivers.mkdir(exist_ok=True)
        for rel in files:
            os.replace(stage / rel, run_dir / rel)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    for rel in sorted(owned - set(files)):
        p = run_dir / rel
        if p.is_file() and not p.is_symlink() and rel.startswith(DRIVERS_DIR + "/"):
            p.unlink()
    atomic_write(run_dir / OUTPUTS_FILE, _dumps({"version": OUTPUTS_VERSION,
                                                  "analysis_version": ANALYSIS_VERSION,
                                                  "files": sorted(files)}))


def _owned(run_dir: Path) -> set[str]:
    """The outputs an earlier rendering wrote in ``run_dir`` (paths relative to it)."""
    ledger = run_dir / OUTPUTS_FILE
    if ledger.is_file() and not ledger.is_symlink():
        try:
            d = json.loads(ledger.read_text(encoding="utf-8"))
            names = d.get("files") if isinstance(d, dict) else None
        except (ValueError, UnicodeDecodeError):
            names = None
        if not isinstance(names, list):
            raise InputError(f"{ledger}: unreadable; move it aside to write here again")
        return {n for n in names if isinstance(n, str) and _output_path(n)}
    if (run_dir / FINDINGS_FILE).is_file() and (run_dir / ANALYSIS_FILE).is_file():
        # a run folder from before the ledger: its outputs have these names
        pages = run_dir / DRIVERS_DIR
        return set(_TOP_FILES) | ({f"{DRIVERS_DIR}/{p.name}" for p in pages.glob("*.html")}
                                  if pages.is_dir() and not pages.is_symlink() else set())
    return set()


def _output_path(rel: str) -> bool:
    """Is ``rel`` a name tracedep gives its outputs (never a path out of the folder)?"""
    if rel in _TOP_FILES:
        return True
    head, _, name = rel.partition("/")
    return (head == DRIVERS_DIR and name.endswith(".html") and "/" not in name
            and name not in ("", ".html") and not name.startswith("."))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path.parent}: no {path.name}; not an analysed tracedep run") from None
    except ValueError as e:
        raise InputError(f"{path}: unreadable: {e}") from None


def load_run_outputs(run_dir: Path | str) -> Analysis:
    """Read a run directory's ``findings.json`` and ``analysis.json`` back."""
    run_dir = Path(run_dir)
    findings = _read_json(run_dir / FINDINGS_FILE)
    rest = _read_json(run_dir / ANALYSIS_FILE)
    if not isinstance(findings, list) or not isinstance(rest, dict):
        raise InputError(f"{run_dir}: {FINDINGS_FILE} must be a list and {ANALYSIS_FILE} "
                         f"an object")
    return analysis_from_json({**rest, "findings": findings})
