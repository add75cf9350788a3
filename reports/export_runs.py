"""Run directories read for the exports other systems take (KCIDB, SARIF).

:func:`load_export_run` reads what an export needs of one run directory: its
findings (``findings.json``/``analysis.json``, when it was analysed) and its
manifest (when there is one), and decides whether the run *completed*.  A run
that did not (the guest panicked, hung or died, the trace is incomplete, the run
failed before tracing) has ``failure`` set: the exports then say "error", never
"pass", for what the run could not see.  A folder that is neither a traced nor
an analysed run is one ``InputError`` line.

Everything here came from a guest or a file: it is copied into JSON as strings
(``json`` escapes them), never into a shell or a path that is opened.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tracedep.analysis.findings import Finding
from tracedep.analysis.health import Ending
from tracedep.common import run_manifest
from tracedep.common.run_manifest import RunManifest
from tracedep.common.run_records import KernelRecord, QemuRecord
from tracedep.errors import InputError


@dataclass(frozen=True)
class ModuleInfo:
    """A module under test, as the manifest (or else the analysis) records it."""

    name: str
    origin: str | None = None  # "module-src", "kernel"
    src_dir: str | None = None
    build_dir: str | None = None
    ko: str | None = None
    loaded: bool | None = None
    insmod_rc: tuple[int, ...] = ()

    @property
    def never_loaded(self) -> bool:
        """The module was known not to load (no load, or every load refused)."""
        if self.loaded is False:
            return True
        return bool(self.insmod_rc) and all(rc != 0 for rc in self.insmod_rc) \
            and self.loaded is not True


@dataclass
class ExportRun:
    """One run, as the exports see it."""

    run_dir: Path
    label: str  # the run's name in the exports: the nightly cell, or the folder's name
    findings: list[Finding]
    modules: list[ModuleInfo]
    analysed: bool
    failure: str | None  # why the run did not complete; None: it did
    stopped: bool = False  # the harness stopped it (an interrupted night): nothing is known
    arch: str | None = None
    kernel: KernelRecord | None = None
    qemu: QemuRecord | None = None
    started: str | None = None  # ISO 8601 as the run wrote it
    tracedep_version: str | None = None
    duration_s: float | None = None
    ending: Ending = field(default_factory=Ending)
    lost: int = 0

    @property
    def key(self) -> str:
        """This run's identity in the exports: the same run directory converted twice
        gives the same key; two runs (two folders, or one folder run again) differ."""
        ident = f"{self.run_dir.absolute()}\x1f{self.started or ''}"
        return hashlib.sha1(ident.encode()).hexdigest()[:16]

    @property
    def drivers(self) -> list[str]:
        """The modules under test and every driver a finding names, sorted."""
        return sorted({m.name for m in self.modules} | {f.driver for f in self.findings})

    def module(self, name: str) -> ModuleInfo | None:
        return next((m for m in self.modules if m.name == name), None)


def rfc3339(stamp: str | None) -> str | None:
    """A run's ``started`` (``2026-12-06T19:52:56+0000``) as RFC 3339, or None."""
    if not stamp:
        return None
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)(Z|[+-]\d\d:?\d\d)?", stamp)
    if m is None:
        return None
    zone = m.group(2) or "Z"
    if zone != "Z" and ":" not in zone:
        zone = f"{zone[:3]}:{zone[3:]}"
    return m.group(1) + zone


def _modules_of(info: RunManifest | None, fallback: Sequence[ModuleInfo]) -> list[ModuleInfo]:
    if info is None or not info.modules:
        return list(fallback)
    return [ModuleInfo(m.name, m.origin, m.src_dir, m.build_dir, m.ko, m.loaded,
                       tuple(m.insmod_rc)) for m in info.modules]


def _failure(info: RunManifest | None, ending: Ending, truncated: bool) -> str | None:
    died = None
    if ending.how is not None and not ending.clean:
        died = f"guest {ending.how}" + (f": {ending.detail}" if ending.detail else "")
    if info is not None and info.state == "failed":
        return info.error or died or "the run failed"
    if died is not None:
        return died
    if (info is not None and info.state == "incomplete") or truncated:
        return "the trace is incomplete: the guest did not finish sending it"
    if info is not None and info.state in ("preparing", "running"):
        return f"the run stopped while {info.state}"
    return None


def load_export_run(run_dir: Path, label: str | None = None, failure: str | None = None,
                    stopped: bool = False) -> ExportRun:
    """What the exports need of ``run_dir``.  ``failure``: the caller knows the run
    failed (the nightly's cell status, the run's own error); ``stopped``: the harness
    stopped it before it could finish."""
    from tracedep.reports.serialize import ANALYSIS_FILE, FINDINGS_FILE, load_run_outputs

    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: no such run directory")
    has_manifest = (run_dir / "manifest.json").is_file()
    analysed = (run_dir / FINDINGS_FILE).is_file() or (run_dir / ANALYSIS_FILE).is_file()
    if not has_manifest and not analysed:
        raise InputError(f"{run_dir}: not a tracedep run directory (no manifest.json, "
                         f"no {FINDINGS_FILE})")
    info = run_manifest.read(run_dir) if has_manifest else None
    a = load_run_outputs(run_dir) if analysed else None
    if a is None and info is not None and info.state == "complete" and failure is None:
        raise InputError(f"{run_dir}: traced but not analysed; run `tracedep analyze "
                         f"{run_dir}` first")
    ending = a.health.ending if a is not None else Ending()
    if info is not None and info.ending.how is not None:
        ending = Ending(info.ending.how, info.ending.detail)
    fallback = [ModuleInfo(m.name, m.origin, m.src_dir, None, None, m.loaded,
                           tuple(m.insmod_rc or ())) for m in a.run.modules] if a else []
    run = a.run if a is not None else None
    failure = failure or _failure(info, ending, a.health.truncated if a else False)
    if a is None and failure is None:
        failure = "the run was not analysed"
    return ExportRun(
        run_dir=run_dir, label=label or run_dir.absolute().name,
        findings=list(a.findings) if a else [], modules=_modules_of(info, fallback),
        analysed=a is not None, failure=failure, stopped=stopped,
        arch=info.arch if info is not None else (run.arch if run else None),
        kernel=info.kernel if info is not None else (run.kernel if run else None),
        qemu=run.qemu if run is not None else None,
        started=info.started if info is not None else (run.started if run else None),
        tracedep_version=(info.tracedep_version if info is not None
                          else (run.tracedep_version if run else None)),
        duration_s=run.duration_s if run is not None else None,
        ending=ending, lost=a.health.lost if a is not None else 0)
