"""Missing releases never multiply into findings (issue 11, item 5).

The inputs are the recorded fixtures of tests/data/traces/rules (one real run of
the bundled drivers, x86_64, see README.md there), with what a run that lost a
release would have: the module's own unlock events taken out, and, for the
kernels whose preempt_count does not count spinlocks (Debian's 6.1 arm64
``PREEMPT_VOLUNTARY`` kernel, calibration ``preempt_count_tracks_spinlocks:
false``), the manifest entry that says those inlined unlocks could not be probed
(``inline_locks.skipped``, as tracer.extra_probes writes it).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
from recorded_fixture import load_fixture

from tracedep.analysis.missing import from_manifest
from tracedep.analysis.pipeline import analyze
from tracedep.analysis.trace import Trace
from tracedep.common.run_manifest import InlineLocks, Lost, RunManifest
from tracedep.reports import serialize
from tracedep.tracer import schema

RULES = Path(__file__).parents[1] / "data" / "traces" / "rules"


def _module_rows(t: Trace, module: str, kind: str) -> np.ndarray:
    ev = t.events
    rows = np.nonzero(ev["kind"].to_numpy() == kind)[0]
    return np.array([r for r in rows.tolist() if t.symbols.module_of(
        int(ev["ip"].iat[r]), int(ev["ts_ns"].iat[r])) == module], dtype=np.int64)


def _without_unlocks(t: Trace, module: str) -> Trace:
    """The trace as a run that never saw ``module``'s spin_unlock()s would be."""
    gone = _module_rows(t, module, "lock_release")
    assert len(gone), f"{module}: no release of its own in the fixture"
    ev = t.events.drop(index=t.events.index[gone]).reset_index(drop=True)
    return dataclasses.replace(t, events=schema.conform(ev), info=copy.deepcopy(t.info))


def _no_preempt_count(t: Trace, module: str) -> Trace:
    """preempt_count does not count spinlocks; the module's unlocks were not probed."""
    t.info.calibration["preempt_count_tracks_spinlocks"] = False
    t.info.inline_locks = InlineLocks(sites=0, calls_out_of_line=0, skipped=[
        {"module": module, "func": "_raw_spin_unlock", "api": "spin_unlock", "call": "line 1",
         "reason": "lock argument: expression DW_OP_addr DW_OP_deref DW_OP_plus_uconst "
                   "DW_OP_stack_value"}])
    return t


def test_the_recorded_runs_force_nothing() -> None:
    """On a trace that saw every release, no held lock is ended by evidence."""
    for m in ("td_alloc_spin_clean", "td_alloc_spin_bug", "td_wait_spin_bug",
              "td_timer_sleep_bug", "td_abba_bug"):
        a = analyze(load_fixture(RULES / m))
        assert a.health.forced_releases.total == 0, (m, a.health.forced_releases)


def test_preempt_count_ends_a_lock_whose_release_was_lost() -> None:
    """x86_64 6.x: preempt_count counts spinlocks, so a record at depth 0 ends them."""
    t = _without_unlocks(load_fixture(RULES / "td_alloc_spin_clean"), "td_alloc_spin_clean")
    a = analyze(t)
    assert [f.message for f in a.findings] == []
    fr = a.health.forced_releases
    assert fr.total >= 1 and set(fr.by_reason) <= {"preempt-count", "preempted"}, fr
    # the report says it once, naming the lock, never per finding
    notes = [w for w in a.health.warnings if "ended without their release" in w]
    assert len(notes) == 1 and fr.classes[0].lock_class in notes[0], a.health.warnings
    # ... in every report format
    files = serialize.render_all(a, generated="test")
    said = [ln for ln in files[serialize.REPORT_FILE].splitlines()
            if ln.startswith("tracedep warning:") and "ended without their release" in ln]
    assert len(said) == 1, said
    assert "ended without their release" in files[serialize.INDEX_FILE]
    assert json.loads(files[serialize.ANALYSIS_FILE])["health"]["forced_releases"] == \
        fr.to_json()


def test_a_skipped_inline_unlock_ends_where_its_taker_returned() -> None:
    """No preempt_count evidence (6.1 arm64): a lock whose unlock is known unprobed is
    kept only while the function that took it is on a may-sleep event's stack."""
    m = "td_alloc_spin_clean"
    t = _no_preempt_count(_without_unlocks(load_fixture(RULES / m), m), m)
    a = analyze(t)
    assert a.findings == [], [f.message for f in a.findings]
    fr = a.health.forced_releases
    assert fr.by_reason.get("release-unseen", 0) >= 1, fr
    assert any("inline_locks.skipped" in s for s in fr.suspect_sources), fr


def test_without_evidence_the_lost_release_is_still_a_finding() -> None:
    """The same trace with no sign that releases are missing: the lock stays held
    (lockdep would do the same), so the two tests above fail without their evidence."""
    m = "td_alloc_spin_clean"
    t = _without_unlocks(load_fixture(RULES / m), m)
    t.info.calibration["preempt_count_tracks_spinlocks"] = False
    t.info.lost = Lost()
    a = analyze(t)
    # td_ring_add_entry() takes ring->lock four times: seen as taken again while held,
    # once, and the lock is then held once, not four times over
    assert [f.kind for f in a.findings] == ["recursive-locking"], [f.message for f in a.findings]
    assert set(a.health.forced_releases.by_reason) == {"re-acquired"}


def test_a_suspect_lock_still_held_by_its_taker_is_reported() -> None:
    """kmalloc(GFP_KERNEL) under the lock, in the function that took it: found even
    though that module's unlocks are said to be unprobed."""
    m = "td_alloc_spin_bug"
    t = _no_preempt_count(load_fixture(RULES / m), m)
    a = analyze(t)
    sleeps = [f for f in a.findings if f.kind == "sleep-in-atomic"]
    assert len(sleeps) == 1 and "spinning lock" in sleeps[0].message, [
        f.message for f in a.findings]


def test_manifest_sources_of_missing_releases() -> None:
    info = {"inline_locks": {"skipped": [
        {"module": "m", "func": "_raw_spin_unlock_irqrestore", "reason": "x"},
        {"module": "m", "func": "_raw_spin_lock", "reason": "x"},  # a lock: no release lost
        {"module": "bad", "reason": "DWARF unusable: ..."}]},
        "probes": {"failed": ["p:tracedep/ul__raw_read_unlock _raw_read_unlock: ENOENT"]},
        "lost": {"total": 0, "kprobe_missed_by_probe": {"ul__raw_write_unlock": 3,
                                                         "lk__raw_spin_lock": 5}}}
    mr = from_manifest(RunManifest.from_json(info))
    assert mr.types == {"rwlock-r", "rwlock-w"}
    assert ("m", "spinlock") in mr.module_types and ("bad", "rwlock-r") in mr.module_types
    assert len(mr.sources) == 1 + 3 + 1 + 1  # m; bad's three lock types; refused; missed
    lost = from_manifest(RunManifest.from_json({"lost": {"total": 7}}))
    assert lost.types == {"spinlock", "rwlock-r", "rwlock-w"}
    assert not from_manifest(RunManifest())
