"""SARIF 2.1.0 (reports/sarif.py) of real runs, checked against the official schema
(tests/data/sarif/sarif-schema-2.1.0.json, OASIS errata01) with jsonschema.

The run: the recorded analysis of a real run of the bundled drivers
(tests/data/analysis/bundled), its drivers' sources moved into a git work tree
of the test's (tests/export_fixture.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from export_fixture import SARIF_SCHEMA, bundled_run_dir, edit_json, tiny_analysed_run

from tracedep.analysis.findings import FINDING_KINDS
from tracedep.reports.export_runs import load_export_run
from tracedep.reports.sarif import FINGERPRINT, sarif_document


def _validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SARIF_SCHEMA.read_text())
    assert schema["id"].endswith("/sarif-schema-2.1.0.json")
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


VALIDATOR = _validator()


def _sarif(*runs: Path) -> dict[str, Any]:
    doc = sarif_document([load_export_run(r) for r in runs])
    errors = sorted(VALIDATOR.iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors[:10])
    return json.loads(json.dumps(doc))


def _phys(loc: dict[str, Any]) -> tuple[str, str | None, int]:
    p = loc["physicalLocation"]
    return (p["artifactLocation"]["uri"], p["artifactLocation"].get("uriBaseId"),
            p["region"]["startLine"])


def test_a_real_run_validates_with_one_result_per_finding(tmp_path: Path) -> None:
    run = bundled_run_dir(tmp_path)
    findings = json.loads((run / "findings.json").read_text())
    doc = _sarif(run)
    assert doc["version"] == "2.1.0"
    (r,) = doc["runs"]
    assert [x["id"] for x in r["tool"]["driver"]["rules"]] == list(FINDING_KINDS)
    assert len(r["results"]) == len(findings)
    for res, f in zip(r["results"], findings, strict=True):
        assert res["ruleId"] == f["kind"]
        assert r["tool"]["driver"]["rules"][res["ruleIndex"]]["id"] == f["kind"]
        assert res["partialFingerprints"] == {FINGERPRINT: f["signature"]}
        assert res["message"]["text"] == f["message"]
        # at the driver's own source line, relative to the source root
        uri, base, line = _phys(res["locations"][0])
        assert base == "SRCROOT" and uri == f"vm/drivers/{f['driver']}/{f['driver']}.c", uri
        assert line > 0
        assert len(res["codeFlows"][0]["threadFlows"]) == len(f["sites"])
    assert r["originalUriBaseIds"]["SRCROOT"]["uri"] == (tmp_path / "src").as_uri() + "/"
    assert r["invocations"] == [{"executionSuccessful": True}]


def test_witness_line_related_locations_and_code_flows(tmp_path: Path) -> None:
    """td_abba_bug's AB-BA: the witness is td_xfer_submit's line 59 (the stats lock
    taken under the queue lock); the other side of the cycle (line 72) is a related
    location; each witness stack is a thread flow, outermost call first."""
    doc = _sarif(bundled_run_dir(tmp_path))
    res = next(x for x in doc["runs"][0]["results"]
               if x["ruleId"] == "lock-order-inversion"
               and x["properties"]["driver"] == "td_abba_bug")
    src = "vm/drivers/td_abba_bug/td_abba_bug.c"
    assert _phys(res["locations"][0]) == (src, "SRCROOT", 59)
    related = [_phys(x) for x in res["relatedLocations"]]
    assert (src, "SRCROOT", 72) in related and (src, "SRCROOT", 57) in related
    assert [x["id"] for x in res["relatedLocations"]] == list(range(1, len(related) + 1))
    flow = res["codeFlows"][0]["threadFlows"][0]["locations"]
    innermost = flow[-1]["location"]
    assert _phys(innermost) == ("include/linux/spinlock.h", "KERNELSRC", 351)
    assert flow[-2]["location"]["logicalLocations"] == [{"name": "td_xfer_submit",
                                                          "kind": "function"}]
    assert [s["nestingLevel"] for s in flow] == list(range(len(flow)))


def test_fingerprints_are_stable_across_runs(tmp_path: Path) -> None:
    one = bundled_run_dir(tmp_path, "night1")
    two = bundled_run_dir(tmp_path, "night2")
    edit_json(two / "analysis.json",
              lambda d: d["run"].update(started="2026-12-07T19:52:56+0000"))
    doc = _sarif(one, two)
    fps = [[x["partialFingerprints"][FINGERPRINT] for x in r["results"]] for r in doc["runs"]]
    assert fps[0] == fps[1] and len(set(fps[0])) == len(fps[0])
    ids = [r["automationDetails"]["id"] for r in doc["runs"]]
    assert ids == ["tracedep/night1/", "tracedep/night2/"]
    assert _sarif(one) == _sarif(one)


def test_sources_outside_git_are_relative_to_the_module_folder(tmp_path: Path) -> None:
    doc = _sarif(bundled_run_dir(tmp_path, git_tree=False))
    r = doc["runs"][0]
    res = next(x for x in r["results"] if x["properties"]["driver"] == "td_abba_bug")
    uri, base, _ = _phys(res["locations"][0])
    assert uri == "td_abba_bug.c"
    root = (tmp_path / "src" / "vm" / "drivers" / "td_abba_bug").as_uri() + "/"
    assert r["originalUriBaseIds"][base]["uri"] == root


def test_a_failed_run_says_so(tmp_path: Path) -> None:
    run = tiny_analysed_run(tmp_path)
    edit_json(run / "manifest.json", lambda m: m.update(
        state="failed", ending={"how": "panic", "detail": "guest-panicked"}))
    (r,) = _sarif(run)["runs"]
    assert r["results"] == []
    inv = r["invocations"][0]
    assert inv["executionSuccessful"] is False
    assert "panic" in inv["toolExecutionNotifications"][0]["message"]["text"]


@pytest.mark.parametrize("hostile", ["a\0b", "$(reboot) `x` 'q' \"d\" \\ %2e%2e/", "é <x>"])
def test_strings_from_the_guest_stay_data(tmp_path: Path, hostile: str) -> None:
    run = bundled_run_dir(tmp_path)

    def taint(findings: list[dict[str, Any]]) -> None:
        findings[0]["message"] = hostile
        findings[0]["sites"][0]["comm"] = hostile
        findings[0]["sites"][0]["frames"][0]["function"] = hostile
        findings[0]["sites"][0]["frames"][0]["file"] = f"/elsewhere/{hostile}.c"

    edit_json(run / "findings.json", taint)
    res = _sarif(run)["runs"][0]["results"][0]
    assert res["message"]["text"] == hostile
    steps = res["codeFlows"][0]["threadFlows"][0]["locations"]
    assert steps[-1]["location"]["logicalLocations"][0]["name"] == hostile
    uri = steps[-1]["location"]["physicalLocation"]["artifactLocation"]["uri"]
    assert uri.startswith("file:///elsewhere/") and " " not in uri and "`" not in uri
