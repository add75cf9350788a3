"""A run's analysis on disk, and every report made from it.

Files of a run directory written here::

    findings.json          list of Finding.to_json(), the contract scripts read
    analysis.json          classes, edges, trace health and the run summary
    report.txt             the lockdep-style text report
    index.html             run summary and every finding
    drivers/<driver>.html  one page per driver

Each file is written to a temporary file in the same folder and renamed over
the old one, so a crash leaves either the old file or the new one, never half.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tracedep.analysis.findings import (
    Analysis,
    ClassStats,
    Edge,
    Frame,
    Site,
    finding_from_json,
)
from tracedep.errors import InputError

ANALYSIS_VERSION = "1.0"
FINDINGS_FILE = "findings.json"
ANALYSIS_FILE = "analysis.json"
REPORT_FILE = "report.txt"
INDEX_FILE = "index.html"
DRIVERS_DIR = "drivers"


def _known(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    # A newer analysis may add fields; an older reader keeps what it knows.
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k in names}


def _site_from_json(d: dict[str, Any]) -> Site:
    frames = tuple(Frame(**_known(Frame, f)) for f in d.get("frames", ()))
    return Site(**{**_known(Site, d), "frames": frames})


def _edge_from_json(d: dict[str, Any]) -> Edge:
    held = d.get("held_witness")
    return Edge(**{**_known(Edge, d), "witness": _site_from_json(d["witness"]),
                   "held_witness": _site_from_json(held) if held is not None else None,
                   "drivers": list(d.get("drivers", ()))})


def _class_from_json(d: dict[str, Any]) -> ClassStats:
    return ClassStats(**_known(ClassStats, d))


def analysis_to_json(a: Analysis) -> dict[str, Any]:
    """The whole analysis as JSON-ready data (``findings`` is ``findings.json``)."""
    return {
        "analysis_version": ANALYSIS_VERSION,
        "findings": [f.to_json() for f in a.findings],
        "classes": [asdict(c) for c in a.classes],
        "edges": [asdict(e) for e in a.edges],
        "health": a.health,
        "run": a.run,
    }


def analysis_from_json(d: dict[str, Any]) -> Analysis:
    """Inverse of :func:`analysis_to_json`; raises ``InputError`` on a foreign version."""
    version = str(d.get("analysis_version", ANALYSIS_VERSION))
    if version.split(".")[0] != ANALYSIS_VERSION.split(".")[0]:
        raise InputError(f"analysis version {version} is not supported "
                         f"(this tracedep reads {ANALYSIS_VERSION})")
    try:
        return Analysis(
            findings=[finding_from_json(f) for f in d.get("findings", [])],
            classes=[_class_from_json(c) for c in d.get("classes", [])],
            edges=[_edge_from_json(e) for e in d.get("edges", [])],
            health=dict(d.get("health", {})),
            run=dict(d.get("run", {})),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"malformed analysis: {type(e).__name__}: {e}") from None


def _dumps(data: Any, sort_keys: bool = False) -> str:
    # analysis.json keeps insertion order: histogram buckets are ordered by it
    return json.dumps(data, indent=2, sort_keys=sort_keys) + "\n"


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    # Not mkstemp: its 0600 would survive the rename; 0666 here is cut by the umask.
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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

    Everything is rendered before anything is written; driver pages left from
    an earlier rendering of this run are removed.
    """
    run_dir = Path(run_dir)
    if generated is None:
        generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    files = render_all(a, generated)
    (run_dir / DRIVERS_DIR).mkdir(parents=True, exist_ok=True)
    for rel, content in files.items():
        write_atomic(run_dir / rel, content)
    keep = {Path(rel).name for rel in files if rel.startswith(DRIVERS_DIR + "/")}
    for old in (run_dir / DRIVERS_DIR).glob("*.html"):
        if old.name not in keep:
            old.unlink()


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
