"""The rules on recorded real traces: one fixture per bundled driver, bug and clean twin.

tests/data/traces/rules/<module>/ holds the slice of one real run of the
bundled drivers that the analysis of <module> needs (tests/recorded_fixture.py; how it
was made: tests/data/traces/README.md).  Each bug fixture must give exactly its
expect.json finding, each clean twin nothing.  tests/data/traces/lockdep/rules/
holds the same for a run on a kernel built with lockdep's lock tracepoints
(vm/lockdep.config): the same findings, with lockdep's class names.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import BundledRun, check_expected, expectations
from recorded_fixture import load_fixture, save_fixture

from tracedep.analysis.pipeline import analyze
from tracedep.analysis.waits import PREFIX
from tracedep.tracer import schema

RULES = Path(__file__).parents[1] / "data" / "traces" / "rules"
EXPECT = expectations()
FIXTURES = sorted(p.name for p in RULES.iterdir() if (p / "manifest.json").is_file()) if (
    RULES.is_dir()) else []
MAX_FIXTURE_BYTES = 200_000
WAIT_PREFIXES = tuple(PREFIX.values())
LOCKDEP_RULES = Path(__file__).parents[1] / "data" / "traces" / "lockdep" / "rules"
LOCKDEP_FIXTURES = sorted(p.name for p in LOCKDEP_RULES.iterdir()
                          if (p / "manifest.json").is_file()) if LOCKDEP_RULES.is_dir() else []


def findings_of(fixture: Path) -> list[dict]:  # type: ignore[type-arg]
    return [f.to_json() for f in analyze(load_fixture(fixture)).findings]


def test_every_bundled_driver_has_a_fixture() -> None:
    missing = sorted(set(EXPECT) - set(FIXTURES))
    assert not missing, (f"no recorded fixture for {missing}: regenerate them with "
                         "tests/data/traces/make_fixtures.py rules RUN_DIR (README.md)")


@pytest.mark.parametrize("module", FIXTURES)
def test_fixture_is_small_and_well_formed(module: str) -> None:
    d = RULES / module
    size = sum(p.stat().st_size for p in d.iterdir())
    assert size < MAX_FIXTURE_BYTES, size
    t = load_fixture(d)
    schema.validate(t.events)
    assert t.events["ts_ns"].is_monotonic_increasing
    sid = t.events["stack_id"]
    assert sid.max() < len(t.stacks) and (sid >= -1).all()
    assert module in {m.name for m in t.info.modules}
    fixture = t.info.extra["fixture"]
    assert isinstance(fixture, dict) and fixture["modules"] == [module]


def test_every_bundled_driver_has_a_lockdep_fixture() -> None:
    assert not sorted(set(EXPECT) - set(LOCKDEP_FIXTURES))


@pytest.mark.parametrize("where", [
    *[pytest.param(RULES / m, id=m) for m in FIXTURES if m in EXPECT],
    *[pytest.param(LOCKDEP_RULES / m, id=f"lockdep-{m}") for m in LOCKDEP_FIXTURES
      if m in EXPECT]])
def test_rules_on_recorded_trace(where: Path) -> None:
    module = where.name
    findings = findings_of(where)
    unseen = EXPECT[module].get("lockdep_kernel") if where.parent == LOCKDEP_RULES else None
    if unseen is not None:
        # a rule this kernel's classes cannot feed (expect.json says why): pinned, so
        # that the day it is found the expectation is updated
        assert len(findings) == unseen["findings"], (unseen["why"], findings)
        return
    problems = check_expected(findings, module)
    want = EXPECT[module]["findings"]
    if len(findings) != len(want):
        problems.append(f"{len(findings)} findings, expected {len(want)}: "
                        f"{[(f['driver'], f['kind'], f['message']) for f in findings]}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("module", [m for m in LOCKDEP_FIXTURES if EXPECT.get(m, {}).get(
    "findings") and "lockdep_kernel" not in EXPECT[m]])
def test_lockdep_kernel_names_the_classes(module: str) -> None:
    """On a lockdep kernel a heap lock is lockdep's class, named as spin_lock_init()'s
    argument (``&ring->lock``), where the Debian kernel's is its allocation site."""
    findings = findings_of(LOCKDEP_RULES / module)
    want = EXPECT[module]["findings"][0]
    heap = [d for d in want.get("lock_details", []) if d["storage"] == "heap"]
    # the objects waited for (analysis.waits) are tracedep's classes, not lockdep's
    locks = [n for f in findings for n in f["locks"] if not n.startswith(WAIT_PREFIXES)]
    for d in heap:
        assert any(n.startswith("&") and n.split(" [")[0].endswith(f"->{d['field']}")
                   for n in locks), (d, locks)
    assert not any("obj+0x" in n for n in locks), locks


@pytest.mark.parametrize("module", [m for m in FIXTURES if m in EXPECT and EXPECT[m]["findings"]])
def test_signature_is_stable(module: str) -> None:
    """Two loads of a fixture give the same signatures (no addresses or times in them)."""
    a = [f["signature"] for f in findings_of(RULES / module)]
    b = [f["signature"] for f in findings_of(RULES / module)]
    assert a == b and all(":" in s for s in a)


# --- save_fixture on a run of today's code --------------------------------------------------


@pytest.mark.guest
@pytest.mark.parametrize("module", ["td_abba_bug", "td_abba_clean", "td_hardirq_bug"])
def test_save_fixture_from_a_fresh_run(bundled_run: BundledRun, tmp_path: Path,
                                       module: str) -> None:
    """A fixture cut from this session's real run analyses as the whole run did."""
    sizes = save_fixture(bundled_run.run_dir, [module], tmp_path / module)
    assert sum(sizes.values()) < MAX_FIXTURE_BYTES, sizes
    whole = [f for f in bundled_run.findings if f["driver"] == module]
    part = findings_of(tmp_path / module)
    assert sorted(f["signature"] for f in part) == sorted(f["signature"] for f in whole), (
        json.dumps([(f["kind"], f["message"]) for f in part], indent=1))


def test_without_dwarf_a_package_modules_nesting_is_not_judged() -> None:
    # ``--no-dwarf`` analyses without a NestingJudge.  A module given without its
    # source (a kernel package's own: configfs's inode_lock_nested() in the
    # real-world scenario) can then not show a *_nested() annotation, so its
    # same-class nestings are counted as not judged, never reported.
    t = load_fixture(RULES / "td_nesting_bug")
    assert [f.kind for f in analyze(t).findings] == ["same-class-nesting"]
    for m in t.info.modules:
        m.src_dir = None
    a = analyze(t)
    assert a.findings == []
    assert any("were not judged" in w for w in a.health.warnings), a.health.warnings
