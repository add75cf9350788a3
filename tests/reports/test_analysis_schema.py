"""The analysis -> reports contract: typed records, the schema version, the upgrade.

tests/data/analysis/v1/<name>/ are run directories as tracedep wrote them at
commit 2095d7a (analysis version 1.0), from recorded traces under tests/data
(their README says how), then rendered again from their own files (``tracedep
report``).  Read today, each must give the same findings and the
same reports; analysed today, the same traces must render as they did then.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from recorded_fixture import load_fixture

from tracedep.analysis.findings import Site, SiteContext, WitnessKind
from tracedep.analysis.health import Ending, Health
from tracedep.analysis.pipeline import analyze
from tracedep.analysis.trace import load
from tracedep.cli import main
from tracedep.common.jsonvalue import Fields
from tracedep.errors import InputError
from tracedep.reports import locks, serialize, upgrade
from tracedep.reports.serialize import (
    ANALYSIS_VERSION,
    analysis_from_json,
    analysis_to_json,
    load_run_outputs,
)

ROOT = Path(__file__).parents[2]
DATA = Path(__file__).parents[1] / "data"
V1 = DATA / "analysis" / "v1"
SAMPLES = sorted(p.name for p in V1.iterdir() if (p / "analysis.json").is_file())
RULES = DATA / "traces" / "rules"
GENERATED = "2026-12-06 00:00:00 UTC"  # what the v1 samples were rendered with


def _v1(name: str) -> tuple[list[dict], dict]:  # type: ignore[type-arg]
    d = V1 / name
    return (json.loads((d / "findings.json").read_text()),
            json.loads((d / "analysis.json").read_text()))


def _v1_sites(findings: list[dict], rest: dict) -> list[dict]:  # type: ignore[type-arg]
    out = [s for f in findings for s in f["sites"]]
    for e in rest["edges"]:
        out += [e["witness"]] + ([e["held_witness"]] if e["held_witness"] else [])
    return out


def _sites(name: str) -> list[Site]:
    a = load_run_outputs(V1 / name)
    return locks.all_sites(a)


def test_samples_are_version_1() -> None:
    assert len(SAMPLES) >= 8
    for name in SAMPLES:
        assert _v1(name)[1]["analysis_version"] == "1.0"


@pytest.mark.parametrize("name", SAMPLES)
def test_v1_upgrade_keeps_everything(name: str) -> None:
    findings, rest = _v1(name)
    a = load_run_outputs(V1 / name)
    assert [f.signature for f in a.findings] == [f["signature"] for f in findings]
    assert [f.message for f in a.findings] == [f["message"] for f in findings]
    old, new = _v1_sites(findings, rest), locks.all_sites(a)
    assert [s["role"] for s in old] == [s.role for s in new]
    # the one formatter says each context as version 1 wrote it
    assert [s["context"] for s in old] == [locks.context_text(s.context) for s in new]
    # every role version 1 wrote has a kind
    assert not [s.role for s in new if s.kind == WitnessKind.OTHER]
    assert a.health.to_json() == rest["health"]
    run, old = a.run.to_json(), rest["run"]
    assert list(run) == list(old)
    for k, v in old.items():
        if k != "kernel":
            assert run[k] == v, k
            continue
        # a fixture's manifest keeps part of the kernel record: the rest is null now
        added = {x: y for x, y in run[k].items() if x not in v}
        assert run[k] == {**v, **added} and set(added.values()) <= {None}, added


def test_v1_dependencies_name_the_lock_held() -> None:
    deps = [s for s in _sites("td_abba_bug") if s.kind == WitnessKind.ACQUIRE and s.holding]
    assert deps and all(s.role == f"{s.lock} acquired while holding {s.holding}" for s in deps)
    irq = {s.kind for s in _sites("td_irq_dep_bug")} | {s.kind for s in _sites("td_hardirq_bug")}
    assert {WitnessKind.IN_HARDIRQ, WitnessKind.HARDIRQS_ON} <= irq


@pytest.mark.parametrize("name", SAMPLES)
def test_current_version_round_trips(name: str) -> None:
    a = load_run_outputs(V1 / name)
    d = json.loads(json.dumps(analysis_to_json(a)))
    assert d["analysis_version"] == ANALYSIS_VERSION == upgrade.VERSION
    assert analysis_from_json(d) == a
    assert serialize.as_current(d) is d  # the current version is read as it is


def _normalise(text: str) -> str:
    text = re.sub(r"generated\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", "generated <DATE>", text)
    text = re.sub(r"(analysis_s(?::|</th><td class=\"mono\">) ?)[\d.]+", r"\1<S>", text)
    # the run record, where a v1 record lacked fields that are null now (checked above)
    return re.sub(r"<details><summary>Run record</summary>.*?</details>", "<RUN>", text,
                  flags=re.S)


def _rendered(d: Path) -> dict[str, str]:
    files = ["report.txt", "index.html", *(f"drivers/{p.name}" for p in
                                           sorted((d / "drivers").glob("*.html")))]
    return {f: _normalise((d / f).read_text()) for f in files}


@pytest.mark.parametrize("name", SAMPLES)
def test_report_on_a_v1_run_directory(name: str, tmp_path: Path) -> None:
    """``tracedep report`` on a run directory of version 1: the same pages again."""
    run = tmp_path / name
    shutil.copytree(V1 / name, run)
    before = _rendered(run)
    rc = main(["report", str(run)])
    assert rc == (1 if _v1(name)[0] else 0)
    assert json.loads((run / "analysis.json").read_text())["analysis_version"] == "2.0"
    ledger = json.loads((run / "outputs.json").read_text())
    assert (ledger["version"], ledger["analysis_version"]) == (2, "2.0")
    assert _rendered(run) == before


def _trace(name: str):  # type: ignore[no-untyped-def]
    if name == "text":
        return load(DATA / "text" / "trace.txt", DATA / "text" / "kallsyms.txt")
    if name == "tiny":
        return load(DATA / "traces" / "tiny")
    return load_fixture(RULES / name)


@pytest.mark.parametrize("name", SAMPLES)
def test_analysed_today_renders_as_v1_did(name: str) -> None:
    """The analysis's typed output, through the reports: what commit 2095d7a wrote."""
    t = _trace(name)
    a = analyze(t)
    source = str(t.source)
    a.health.source = Path(source).relative_to(ROOT).as_posix() if Path(
        source).is_absolute() else source
    files = serialize.render_all(a, generated=GENERATED)
    # as written and read back: the samples are their own files rendered again (the
    # details of a finding then come in findings.json's sorted order)
    files = serialize.render_all(analysis_from_json({
        **json.loads(files[serialize.ANALYSIS_FILE]),
        "findings": json.loads(files[serialize.FINDINGS_FILE])}), generated=GENERATED)
    want = _rendered(V1 / name)
    assert {f: _normalise(files[f]) for f in want} == want
    assert set(files) == set(want) | {"findings.json", "analysis.json"}


def test_role_and_context_words_of_v1() -> None:
    assert upgrade.role("held l", "l") == (WitnessKind.HELD, None)
    assert upgrade.role("a [m] acquired while holding b c", "a [m]") == (WitnessKind.ACQUIRE,
                                                                           "b c")
    assert upgrade.role("x taken with softirqs enabled (softirq-unsafe)", "x") == (
        WitnessKind.SOFTIRQS_ON, None)
    assert upgrade.role("x taken in hardirq context (softirq-safe)", "x")[0] == WitnessKind.OTHER
    assert upgrade.role("irq-context", "x") == (WitnessKind.OTHER, None)
    assert upgrade.context("preempt=2 irqs-off bh-off hardirq softirq") == SiteContext(
        2, True, True, True, True).to_json()
    assert upgrade.context(None) is None
    with pytest.raises(ValueError, match="nmi"):
        upgrade.context("preempt=1 nmi")


def test_malformed_files_are_input_errors(tmp_path: Path) -> None:
    shutil.copytree(V1 / "td_abba_bug", tmp_path / "run")
    findings = json.loads((tmp_path / "run" / "findings.json").read_text())
    findings[0]["sites"][0]["context"] = "preempt=one"
    (tmp_path / "run" / "findings.json").write_text(json.dumps(findings))
    with pytest.raises(InputError, match="malformed analysis"):
        load_run_outputs(tmp_path / "run")
    d = analysis_to_json(load_run_outputs(V1 / "td_abba_bug"))
    d["health"]["lost"] = "none"
    with pytest.raises(InputError, match=r"analysis\.health\.lost: expected an integer"):
        analysis_from_json(d)
    d = analysis_to_json(load_run_outputs(V1 / "td_abba_bug"))
    d["findings"][0]["sites"][0]["kind"] = "guessed"
    with pytest.raises(InputError, match="malformed"):
        analysis_from_json(d)


def test_health_notes_are_the_analysis_own() -> None:
    """The warnings restating lost, truncated and the ending are the ones the report
    leaves out of its warnings (it says those facts first), by value, not by words."""
    h = Health(lost=3, truncated=True, ending=Ending("panic", "oops"),
               warnings=["3 events were lost (ring-buffer overruns or a torn transport): "
                         "findings may be missing", "the trace is truncated: the guest did "
                         "not finish sending it", "the guest did not power off cleanly: "
                         "panic oops", "something else lost"])
    assert h.problem_notes() == set(h.warnings[:3])
    h.add_warning("something else lost")
    assert h.warnings.count("something else lost") == 1
    assert Health.from_json(Fields(json.loads(json.dumps(h.to_json())), "h")) == h
