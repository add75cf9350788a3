"""JUnit XML for CI dashboards: one ``<testsuite>`` per run.

Each driver the run loaded is a ``<testcase>`` (``classname`` = the cell, ``name``
= the driver); each finding of that driver is a ``<failure>`` (``type`` = its kind,
``message`` = its message, text = signature and witness frames).  Several failures
in one test case is what Jenkins, GitLab and most JUnit readers show as a list.
A run that failed (no boot, crash, module that does not build) is one
``<testcase name="run">`` with an ``<error>``.  ``ElementTree`` does the escaping.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence

from tracedep.analysis.findings import Finding

RUN_CASE = "run"


def _failure_text(f: Finding) -> str:
    lines = [f.message, f"signature: {f.signature}", f"count: {f.count}"]
    for site in f.sites:
        lines.append(f"{site.role}:")
        lines.extend(f"  {fr.short()}" for fr in site.frames)
    return "\n".join(lines)


def run_suite(name: str, drivers: Sequence[str], findings: Sequence[Finding],
              error: str | None = None, elapsed_s: float = 0.0) -> ET.Element:
    """The ``<testsuite>`` of one run; ``error`` marks a run that did not complete."""
    by_driver: dict[str, list[Finding]] = {d: [] for d in drivers}
    for f in findings:
        by_driver.setdefault(f.driver, []).append(f)
    suite = ET.Element("testsuite", name=name)
    tests = failures = errors = 0
    if error is not None:
        case = ET.SubElement(suite, "testcase", classname=name, name=RUN_CASE,
                             time=f"{elapsed_s:.3f}")
        ET.SubElement(case, "error", message=error, type="run-failed").text = error
        tests, errors = 1, 1
    for driver in sorted(by_driver):
        case = ET.SubElement(suite, "testcase", classname=name, name=driver, time="0")
        tests += 1
        for f in by_driver[driver]:
            el = ET.SubElement(case, "failure", message=f.message, type=f.kind)
            el.text = _failure_text(f)
            failures += 1
    suite.set("tests", str(tests))
    suite.set("failures", str(failures))
    suite.set("errors", str(errors))
    suite.set("skipped", "0")
    suite.set("time", f"{elapsed_s:.3f}")
    return suite


def to_xml(suites: Sequence[ET.Element], name: str = "tracedep") -> str:
    """A ``<testsuites>`` document of the given suites."""
    root = ET.Element("testsuites", name=name)
    for key in ("tests", "failures", "errors"):
        root.set(key, str(sum(int(s.get(key, "0")) for s in suites)))
    root.extend(suites)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
