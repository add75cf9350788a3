"""KCIDB v5 (reports/kcidb.py) of real runs, checked with KernelCI's own validator.

The runs: the recorded analysis of a real run of the bundled drivers (25 findings of
six kinds in 19 drivers, tests/data/analysis/bundled) and the recorded tiny run
(tests/data/traces/tiny) analysed here (tests/export_fixture.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kcidb_io
import pytest
from export_fixture import bundled_run_dir, edit_json, git, tiny_analysed_run

from tracedep.analysis.findings import FINDING_KINDS
from tracedep.reports.export_runs import load_export_run
from tracedep.reports.kcidb import ISSUE_VERSION, SCHEMA_MAJOR, SCHEMA_MINOR, kcidb_document

V5 = kcidb_io.schema.V5_3


def _doc(*runs: Path) -> dict[str, Any]:
    doc = kcidb_document([load_export_run(r) for r in runs])
    # what kcidb-submit checks: the latest schema (it takes v5.3 as it is), and that data
    V5.validate(doc)
    assert kcidb_io.schema.LATEST.is_compatible_exactly(doc) or kcidb_io.schema.LATEST > V5
    # every string went through json: the document is JSON as it stands
    json.loads(json.dumps(doc))
    return dict(doc)


def _tests(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["path"]: t for t in doc["tests"]}


def test_the_schema_version_is_kcidb_ios_latest_v5() -> None:
    assert (SCHEMA_MAJOR, SCHEMA_MINOR) == (V5.major, V5.minor) == (5, 3)
    assert kcidb_io.schema.LATEST.major == 5


def test_a_real_run_validates_and_maps_every_finding(tmp_path: Path) -> None:
    run = bundled_run_dir(tmp_path)
    doc = _doc(run)
    findings = json.loads((run / "findings.json").read_text())
    modules = json.loads((run / "analysis.json").read_text())["run"]["modules"]
    tests = _tests(doc)
    # one run test, one test per driver and kind
    assert tests["tracedep"]["status"] == "FAIL"
    assert len(doc["tests"]) == 1 + len(modules) * len(FINDING_KINDS)
    failing = {(f["driver"], f["kind"]) for f in findings}
    for path, t in tests.items():
        if path == "tracedep":
            continue
        _, driver, kind = path.split(".")
        assert t["status"] == ("FAIL" if (driver, kind) in failing else "PASS"), path
    assert tests["tracedep.td_abba_clean.lock-order-inversion"]["status"] == "PASS"
    # an issue per signature, an incident per finding, linking issue and test
    assert sorted(i["id"] for i in doc["issues"]) == sorted(
        f"tracedep:{f['signature']}" for f in findings)
    assert all(i["version"] == ISSUE_VERSION for i in doc["issues"])
    assert len(doc["incidents"]) == len(findings)
    ids = {t["id"]: t for t in doc["tests"]}
    for inc in doc["incidents"]:
        t = ids[inc["test_id"]]
        f = next(f for f in findings if f"tracedep:{f['signature']}" == inc["issue_id"])
        assert t["path"] == f"tracedep.{f['driver']}.{f['kind']}" and t["status"] == "FAIL"
        assert inc["issue_version"] == ISSUE_VERSION and inc["present"] is True
    # every test's build exists, every build's checkout exists
    builds = {b["id"]: b for b in doc["builds"]}
    checkouts = {c["id"] for c in doc["checkouts"]}
    assert all(t["build_id"] in builds for t in doc["tests"])
    assert all(b["checkout_id"] in checkouts for b in doc["builds"])
    assert len(builds) == len(modules) + 1  # each module's build and the kernel's


def test_the_checkout_is_the_driver_trees_git_commit(tmp_path: Path) -> None:
    run = bundled_run_dir(tmp_path)
    head = git(tmp_path / "src", "rev-parse", "HEAD")
    doc = _doc(run)
    gits = [c for c in doc["checkouts"] if "git_commit_hash" in c]
    assert len(gits) == 1 and gits[0]["git_commit_hash"] == head
    assert gits[0]["git_repository_branch"] == "main"
    abba = next(b for b in doc["builds"] if b.get("misc", {}).get("module") == "td_abba_bug")
    assert abba["checkout_id"] == gits[0]["id"]
    kernel = [c for c in doc["checkouts"] if c.get("tree_name") == "debian"]
    assert len(kernel) == 1 and "6.12.118-1~deb12u1" in kernel[0]["comment"]


def test_sources_outside_git_are_a_checkout_without_a_commit(tmp_path: Path) -> None:
    doc = _doc(bundled_run_dir(tmp_path, git_tree=False))
    assert not any("git_commit_hash" in c for c in doc["checkouts"])
    assert all(b["checkout_id"] in {c["id"] for c in doc["checkouts"]} for b in doc["builds"])


def test_ids_are_stable_and_one_bug_is_one_issue_across_nights(tmp_path: Path) -> None:
    night1 = bundled_run_dir(tmp_path, "night1")
    night2 = bundled_run_dir(tmp_path, "night2")
    edit_json(night2 / "analysis.json",
              lambda d: d["run"].update(started="2026-12-07T19:52:56+0000"))
    a, b = _doc(night1), _doc(night1)
    assert a == b  # the same run converted twice: the same document
    both = _doc(night1, night2)
    issues = [i["id"] for i in both["issues"]]
    assert len(issues) == len(set(issues)) == len(a["issues"])  # one issue per bug
    assert len(both["incidents"]) == 2 * len(a["incidents"])  # one incident per night
    assert len({t["id"] for t in both["tests"]}) == len(both["tests"])  # no id twice
    assert {i["id"] for i in _doc(night2)["issues"]} == {i["id"] for i in a["issues"]}
    # the same kernel is one build; a module build the run did not name (no manifest
    # here: no kbuild folder) is the night's own
    kernel = {b["id"] for b in both["builds"] if b["id"].startswith("tracedep:build:kernel:")}
    assert len(kernel) == 1 and len(both["builds"]) == 2 * len(a["builds"]) - 1


def test_a_guest_that_died_is_error_not_pass(tmp_path: Path) -> None:
    """The tiny run, with its manifest saying the guest panicked: the run and every
    test without a finding are ERROR (what a dead guest did not show is unknown)."""
    run = tiny_analysed_run(tmp_path)
    ok = _tests(_doc(run))
    assert ok["tracedep"]["status"] == "PASS"
    assert {t["status"] for p, t in ok.items() if p.startswith("tracedep.td_tiny.")} == {"PASS"}

    def died(m: dict[str, Any]) -> None:
        m.update(state="failed", error="guest panic: Kernel panic - not syncing: Fatal",
                 ending={"how": "panic", "detail": "guest-panicked"})

    edit_json(run / "manifest.json", died)
    doc = _doc(run)
    tests = _tests(doc)
    assert tests["tracedep"]["status"] == "ERROR"
    assert "panic" in tests["tracedep"]["log_excerpt"]
    assert {t["status"] for p, t in tests.items() if p.startswith("tracedep.td_tiny.")} == {
        "ERROR"}


def test_findings_of_a_run_that_hung_still_fail(tmp_path: Path) -> None:
    """Damage can lose findings, never add one: what a hung run found is FAIL, the rest
    ERROR; a module that never loaded is MISS."""
    run = bundled_run_dir(tmp_path)

    def hung(d: dict[str, Any]) -> None:
        d["health"]["ending"] = {"how": "timeout", "detail": "no poweroff in 300 s"}
        for m in d["run"]["modules"]:
            if m["name"] == "td_nesting_clean":
                m.update(loaded=False, insmod_rc=[22])

    edit_json(run / "analysis.json", hung)
    tests = _tests(_doc(run))
    assert tests["tracedep"]["status"] == "ERROR"
    assert tests["tracedep.td_abba_bug.lock-order-inversion"]["status"] == "FAIL"
    assert tests["tracedep.td_abba_bug.sleep-in-atomic"]["status"] == "ERROR"
    assert tests["tracedep.td_abba_clean.lock-order-inversion"]["status"] == "ERROR"
    assert {t["status"] for p, t in tests.items()
            if p.startswith("tracedep.td_nesting_clean.")} == {"MISS"}


@pytest.mark.parametrize("hostile", ["a\0b", "$(rm -rf /); `x` 'q' \"d\" \\", "é\n<x>"])
def test_strings_from_the_guest_stay_data(tmp_path: Path, hostile: str) -> None:
    """A comm, function or message with any characters goes into JSON only (a NUL,
    which KCIDB's patterns refuse, is written as ``\\0``)."""
    run = bundled_run_dir(tmp_path)

    def taint(findings: list[dict[str, Any]]) -> None:
        findings[0]["message"] = hostile
        findings[0]["sites"][0]["comm"] = hostile
        findings[0]["sites"][0]["frames"][0]["function"] = hostile

    edit_json(run / "findings.json", taint)
    doc = _doc(run)
    comment = next(i["comment"] for i in doc["issues"] if "lock-order" in i["id"]
                   and i["misc"]["driver"] == "td_abba_bug")
    assert comment == hostile.replace("\0", "\\0")
