"""invalid-wait-context (analysis.rt_rules) on recorded real traces of the bundled drivers.

The lock types are given here by class name, as analysis.lock_ctypes would read
them: the rule must then report a spinlock_t taken under a raw_spinlock_t
(td_abba_bug's real queue -> stats nesting, with its queue lock declared raw) with both
witnesses, and nothing when either type is a spinlock_t or unknown.  Without DWARF, or
the answers a fixture recorded from it (``lock_ctypes``), it judges nothing at all.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from recorded_fixture import load_fixture

from tracedep.analysis import pipeline
from tracedep.analysis.findings import Finding, WitnessKind
from tracedep.analysis.lock_ctypes import RAW, SPIN, LockTypes
from tracedep.analysis.rt_rules import KIND

RULES = Path(__file__).parents[1] / "data" / "traces" / "rules"


class _Types(LockTypes):
    """Lock types by class name (None: unknown), in place of DWARF."""

    def __init__(self, by_name: dict[str, str | None]) -> None:
        super().__init__(lambda m, ip, ts: [])
        self.by_name = by_name

    def at_site(self, module: str, ip: int, ts: int) -> str | None:
        return None

    def of_object(self, class_key: str, class_name: str, module: str, ip: int,
                  ts: int) -> str | None:
        return self.by_name.get(class_name)


def _findings(fixture: str, types: dict[str, str | None] | None) -> list[Finding]:
    """The pipeline's findings of this kind with these lock types, as DWARF's answers
    would give them (``Trace.lock_types``; None: no DWARF)."""
    t = load_fixture(RULES / fixture)
    t.lock_types = _Types(types) if types is not None else None
    return [f for f in pipeline.analyze(t).findings if f.kind == KIND]


def test_spinlock_under_raw() -> None:
    q, s = "td_xfer_queue_lock", "td_xfer_stats_lock"
    [f] = _findings("td_abba_bug", {q: RAW, s: SPIN})
    assert f.locks == [q, s] and f.driver == "td_abba_bug"
    assert f.details["inner"] == SPIN and f.details["held"] == RAW
    assert f.details["preempt_rt_only"] is True and "PREEMPT_RT only" in f.message
    acq, held = f.sites
    assert acq.kind == WitnessKind.ACQUIRE and acq.lock == s and acq.holding == q
    assert held.kind == WitnessKind.HELD and held.lock == q
    assert acq.frames[0].module == held.frames[0].module == "td_abba_bug"
    assert f.signature == _findings("td_abba_bug", {q: RAW, s: SPIN})[0].signature


@pytest.mark.parametrize("types", [
    {"td_xfer_queue_lock": SPIN, "td_xfer_stats_lock": SPIN},  # legal everywhere
    {"td_xfer_queue_lock": RAW, "td_xfer_stats_lock": RAW},  # raw in raw: legal on RT
    {"td_xfer_queue_lock": RAW, "td_xfer_stats_lock": None},  # unknown: not judged
    {"td_xfer_queue_lock": None, "td_xfer_stats_lock": SPIN},
    {},
])
def test_nothing_unless_both_known_and_wrong(types: dict[str, str | None]) -> None:
    assert _findings("td_abba_bug", types) == []


def test_without_dwarf_nothing_is_judged() -> None:
    assert _findings("td_abba_bug", None) == []
    for fixture in sorted(p.name for p in RULES.iterdir() if (p / "manifest.json").is_file()):
        t = load_fixture(RULES / fixture)
        t.lock_types = None  # the DWARF answers recorded with it, if any, forgotten
        assert [f for f in pipeline.analyze(t).findings if f.kind == KIND] == [], fixture


def test_recorded_answers_judge_both_twins() -> None:
    """td_rt_wait_bug's and td_rt_wait_clean's fixtures carry DWARF's lock types: the
    bug gives its two findings from them, the twin, with raw and non-raw locks typed
    too, nothing."""
    for name, want in (("td_rt_wait_bug", 2), ("td_rt_wait_clean", 0)):
        t = load_fixture(RULES / name)
        answers = t.info.extra["fixture"]["lock_ctypes"][name]  # type: ignore[index]
        kinds = {v for per in answers["object"].values() for v in per.values()}
        assert {RAW, SPIN} <= kinds, (name, answers)
        found = [f for f in pipeline.analyze(t).findings if f.kind == KIND]
        assert len(found) == want and all(f.driver == "td_rt_wait_bug" for f in found), name


def test_allocation_under_raw() -> None:
    """td_alloc_spin_clean's real kmalloc(GFP_ATOMIC) under ring->lock: legal under a
    spinlock_t, PREEMPT_RT-invalid under a raw_spinlock_t."""
    lock = "td_ring_probe():obj+0x0"  # struct td_ring.lock, named without DWARF
    assert _findings("td_alloc_spin_clean", {lock: SPIN}) == []
    [f] = _findings("td_alloc_spin_clean", {lock: RAW})
    assert f.locks == [lock] and f.details["inner"] == "allocation"
    assert str(f.details["api"]).startswith("kmalloc(GFP_ATOMIC")
    alloc, held = f.sites
    assert alloc.kind == WitnessKind.SLEEP and held.kind == WitnessKind.HELD
    assert f.details["function"] == "td_ring_add_entry" and f.count >= 4
