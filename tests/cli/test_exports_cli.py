"""The KCIDB and SARIF exports on the command line: ``tracedep kcidb|sarif RUN_DIR…``,
``run --kcidb/--sarif`` (a run that failed is still written, as ERROR), ``nightly
--kcidb/--sarif``, and bad input as one line and exit 2.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import jsonschema
import kcidb_io
import pytest
from conftest import run_tracedep
from export_fixture import SARIF_SCHEMA, bundled_run_dir, edit_json, tiny_analysed_run

from tracedep import cli
from tracedep.errors import GuestError

BROKEN = Path(__file__).parents[1] / "data" / "drivers" / "td_broken"


def _valid_sarif(doc: dict[str, Any]) -> None:
    schema = json.loads(SARIF_SCHEMA.read_text())
    jsonschema.validators.validator_for(schema)(schema).validate(doc)


@pytest.mark.parametrize("fmt", ["kcidb", "sarif"])
def test_converter_writes_a_valid_document(tmp_path: Path, fmt: str) -> None:
    run = bundled_run_dir(tmp_path)
    out = tmp_path / f"out.{fmt}.json"
    res = run_tracedep(fmt, run, "--out", out, timeout=300)
    assert res.rc == 0, res.explain()
    assert "25 findings" in res.stdout
    doc = json.loads(out.read_text())
    if fmt == "kcidb":
        kcidb_io.schema.V5_3.validate(doc)
        assert len(doc["issues"]) == 25
    else:
        _valid_sarif(doc)
        assert len(doc["runs"][0]["results"]) == 25
    # to standard output, for a pipe into a submitter
    res = run_tracedep(fmt, run, "--out", "-", timeout=300)
    assert res.rc == 0 and json.loads(res.stdout) == doc


def _not_a_run(tmp: Path) -> list[str]:
    (tmp / "empty").mkdir()
    return [str(tmp / "empty")]


def _missing(tmp: Path) -> list[str]:
    return [str(tmp / "nowhere")]


def _garbled(tmp: Path) -> list[str]:
    run = bundled_run_dir(tmp)
    (run / "findings.json").write_text("[{\"kind\": ")
    return [str(run)]


def _bad_manifest(tmp: Path) -> list[str]:
    (tmp / "r").mkdir()
    (tmp / "r" / "manifest.json").write_text(json.dumps({"manifest_version": "2.0",
                                                          "modules": "x"}))
    return [str(tmp / "r")]


def _traced_only(tmp: Path) -> list[str]:
    from conftest import tiny_run_copy

    return [str(tiny_run_copy(tmp))]


def _a_file(tmp: Path) -> list[str]:
    (tmp / "f.json").write_text("{}")
    return [str(tmp / "f.json")]


@pytest.mark.parametrize("fmt", ["kcidb", "sarif"])
@pytest.mark.parametrize("make, words", [
    (_not_a_run, "not a tracedep run directory"), (_missing, "no such run directory"),
    (_garbled, "unreadable"), (_bad_manifest, "manifest.json"),
    (_traced_only, "traced but not analysed"), (_a_file, "no such run directory")])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, fmt: str, make: Any,
                                          words: str) -> None:
    out = tmp_path / "out.json"
    res = run_tracedep(fmt, *make(tmp_path), "--out", out, timeout=300)
    assert res.rc == 2, res.explain()
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tracedep: error:"), res.stderr
    assert words in lines[0] and "Traceback" not in res.stderr
    assert not out.exists()


def test_an_output_that_cannot_be_written_is_refused_first(tmp_path: Path) -> None:
    res = run_tracedep("sarif", bundled_run_dir(tmp_path), "--out", tmp_path / "no" / "x.json",
                       timeout=300)
    assert res.rc == 2 and res.errors == [f"tracedep: error: {tmp_path / 'no'}: no such "
                                          f"directory"], res.explain()


def test_a_run_that_died_is_written_as_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """``run --kcidb --sarif`` of a run whose guest panicked: exit 3 as ever, and both
    files written, the run's tests ERROR (the guest is not booted here: the run is the
    recorded tiny one, its manifest saying the guest panicked)."""
    run = tiny_analysed_run(tmp_path)

    def died(a: Any) -> int:
        edit_json(a.out / "manifest.json", lambda m: m.update(
            state="failed", error="guest panic: Kernel panic - not syncing",
            ending={"how": "panic", "detail": "guest-panicked"}))
        raise GuestError("guest panic: Kernel panic - not syncing; partial trace kept")

    monkeypatch.setattr(cli, "_run", died)
    k, s = tmp_path / "k.json", tmp_path / "s.json"
    assert cli.main(["run", "--out", str(run), "--kcidb", str(k), "--sarif", str(s)]) == 3
    assert "guest panic" in capsys.readouterr().err
    doc = json.loads(k.read_text())
    kcidb_io.schema.V5_3.validate(doc)
    assert {t["status"] for t in doc["tests"]} == {"ERROR"}
    sarif = json.loads(s.read_text())
    _valid_sarif(sarif)
    assert sarif["runs"][0]["invocations"][0]["executionSuccessful"] is False


def test_a_run_that_completed_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    run = bundled_run_dir(tmp_path)
    monkeypatch.setattr(cli, "_run", lambda a: 1)
    k, s = tmp_path / "k.json", tmp_path / "s.json"
    assert cli.main(["run", "--out", str(run), "--kcidb", str(k), "--sarif", str(s)]) == 1
    doc = json.loads(k.read_text())
    assert next(t for t in doc["tests"] if t["path"] == "tracedep")["status"] == "FAIL"
    assert len(json.loads(s.read_text())["runs"][0]["results"]) == 25


def test_nightly_writes_kcidb_and_sarif_of_a_failed_cell(tmp_path: Path) -> None:
    """A driver that does not build (no guest boots): the night's KCIDB has the cell's
    run test as ERROR with the reason, and its SARIF says the run did not succeed."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(textwrap.dedent(f"""
        [driver_sets]
        broken = "{BROKEN}"
        """))
    k, s = tmp_path / "night.kcidb.json", tmp_path / "night.sarif"
    p = subprocess.run([sys.executable, "-m", "tracedep.cli", "nightly", str(cfg), "--out",
                        str(tmp_path / "out"), "--kcidb", str(k), "--sarif", str(s)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 3, p.stdout + p.stderr
    doc = json.loads(k.read_text())
    kcidb_io.schema.V5_3.validate(doc)
    (run_test,) = [t for t in doc["tests"] if t["path"] == "tracedep"]
    assert run_test["status"] == "ERROR" and "does not build" in run_test["log_excerpt"]
    assert run_test["misc"]["run"] == "default/x86_64/broken/default"
    assert all(t["status"] != "PASS" for t in doc["tests"])
    sarif = json.loads(s.read_text())
    _valid_sarif(sarif)
    (r,) = sarif["runs"]
    assert r["automationDetails"]["id"] == "tracedep/default/x86_64/broken/default/"
    assert r["invocations"][0]["executionSuccessful"] is False
