"""The rules over the row store (analysis.row_store) against the rules over the whole frame.

The pipeline hands the rules a store of the rows the replay, the wait graph and the
PREEMPT_RT allocation cases name, numbered anew.  Here the same pipeline runs a
second time with a store that is the whole frame, numbered as it is (what the rules
read before the store existed); every finding, edge, class and health field must be
the same.  The traces are the recorded real runs of the bundled drivers (planted
bugs and clean twins), with DWARF's lock types where the fixture recorded them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from recorded_fixture import load_fixture
from recorded_traces import DATA, FIXTURES, RUNS, load_any

from tracedep.analysis import pipeline, row_store, rt_rules
from tracedep.analysis.findings import Analysis
from tracedep.analysis.lock_ctypes import RAW, LockTypes
from tracedep.analysis.replay_types import Replay
from tracedep.analysis.row_store import AllocationCase, Edges, Renumbered, RowStore
from tracedep.analysis.trace_model import Trace
from tracedep.reports.serialize import analysis_to_json


def _whole_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the pipeline's store the whole frame, its rows numbered as they are."""

    def keep(events: pd.DataFrame, rows: np.ndarray) -> RowStore:
        return RowStore(events, np.arange(len(events), dtype=np.int64))

    def renumber(store: RowStore, rep: Replay, wait_edges: Edges,
                 cases: list[AllocationCase] = (),  # type: ignore[assignment]
                 text_sites: dict | None = None) -> Renumbered:  # type: ignore[type-arg]
        return Renumbered(rep, wait_edges, list(cases), text_sites or {})

    monkeypatch.setattr(row_store.RowStore, "keep", staticmethod(keep))
    monkeypatch.setattr(row_store, "renumber", renumber)


def _comparable(a: Analysis) -> dict[str, object]:
    out = analysis_to_json(a)
    out["health"].pop("analysis_s")
    out["findings"] = [f.__dict__ for f in a.findings]
    return out


class _AllRaw(LockTypes):
    """Every spinning lock a raw_spinlock_t: every allocation case and nesting judged."""

    def __init__(self) -> None:
        super().__init__(lambda m, ip, ts: [])

    def at_site(self, module: str, ip: int, ts: int) -> str | None:
        return None

    def of_object(self, class_key: str, class_name: str, module: str, ip: int,
                  ts: int) -> str | None:
        return RAW


def _analyze(path: Path, raw: bool) -> Analysis:
    t: Trace = load_any(path)
    if raw:
        t.lock_types = _AllRaw()
    return pipeline.analyze(t)


def test_fixtures_found() -> None:
    assert len(FIXTURES) >= 60 and all(p.is_dir() for p in RUNS), FIXTURES


@pytest.mark.parametrize("raw", [False, True], ids=["types-as-recorded", "all-raw"])
@pytest.mark.parametrize("path", FIXTURES + RUNS,
                         ids=[str(p.relative_to(DATA)) for p in FIXTURES + RUNS])
def test_store_gives_the_whole_frames_analysis(monkeypatch: pytest.MonkeyPatch, path: Path,
                                               raw: bool) -> None:
    stored = _analyze(path, raw)
    with monkeypatch.context() as m:
        _whole_frame(m)
        whole = _analyze(path, raw)
    assert _comparable(stored) == _comparable(whole)


def test_the_store_is_small_and_named() -> None:
    """On the busiest fixture the store holds a small part of the frame, and asking it
    for a row nobody named fails rather than reading another row."""
    t = load_fixture(DATA / "rules" / "td_abba_bug")
    kept: list[RowStore] = []
    real = row_store.RowStore.keep

    def spy(events: pd.DataFrame, rows: np.ndarray) -> RowStore:
        kept.append(real(events, rows))
        return kept[-1]

    with pytest.MonkeyPatch.context() as m:
        m.setattr(row_store.RowStore, "keep", staticmethod(spy))
        a = pipeline.analyze(t)
    [store] = kept
    assert a.findings and 0 < len(store.rows) < len(t.events) / 2
    assert np.all(np.diff(store.rows) > 0)
    missing = next(r for r in range(len(t.events)) if r not in set(store.rows.tolist()))
    with pytest.raises(KeyError):
        store.pos(missing)
    with pytest.raises(IndexError):
        RowStore.keep(t.events, np.array([len(t.events)]))


@pytest.mark.parametrize("path", FIXTURES + RUNS,
                         ids=[str(p.relative_to(DATA)) for p in FIXTURES + RUNS])
def test_allocation_cases_count_what_every_occurrence_gives(path: Path) -> None:
    """rt_rules.allocation_cases judges the first of each verdict and counts the rest:
    the same findings, counts and witnesses as one case per occurrence."""
    once = [f for f in _analyze(path, True).findings if f.details.get("inner") == "allocation"]
    with pytest.MonkeyPatch.context() as m:
        m.setattr(rt_rules, "verdict_key", lambda *_: object())  # every one its own
        each = [f for f in _analyze(path, True).findings
                if f.details.get("inner") == "allocation"]
    assert [f.__dict__ for f in once] == [f.__dict__ for f in each]


def test_allocation_cases_are_counted() -> None:
    """td_alloc_spin_clean's kmalloc(GFP_ATOMIC) under its ring lock repeats (4 times):
    one case, its repeats counted."""
    a = _analyze(DATA / "rules" / "td_alloc_spin_clean", True)
    [f] = [f for f in a.findings if f.details.get("inner") == "allocation"]
    assert f.count == 4, f.count
    cases: list[list[AllocationCase]] = []
    real = rt_rules.allocation_cases
    with pytest.MonkeyPatch.context() as m:
        m.setattr(rt_rules, "allocation_cases", lambda *a: cases.append(real(*a)) or cases[-1])
        _analyze(DATA / "rules" / "td_alloc_spin_clean", True)
    [[case]] = cases
    assert case.repeats == 3


@pytest.mark.parametrize("column,change", [("gfp", 0x800), ("ip", 1)],
                         ids=["other-flags", "other-call-site"])
def test_allocation_cases_part_on_what_the_verdict_reads(column: str, change: int) -> None:
    """One of td_alloc_spin_clean's four allocations with other flags (GFP_NOWAIT), or
    from another address: a case of its own, not a repeat of the others."""
    seen: list[tuple[pd.DataFrame, Replay, object]] = []
    real = rt_rules.allocation_cases
    with pytest.MonkeyPatch.context() as m:
        m.setattr(rt_rules, "allocation_cases",
                  lambda ev, rep, syms: seen.append((ev, rep, syms)) or real(ev, rep, syms))
        _analyze(DATA / "rules" / "td_alloc_spin_clean", True)
    [(ev, rep, syms)] = seen
    [case] = real(ev, rep, syms)  # type: ignore[arg-type]
    ev = ev.copy()
    rows = np.nonzero((ev["kind"] == "alloc").to_numpy()
                      & (ev["ip"].to_numpy() == ev["ip"].iat[case.row]))[0]
    assert len(rows) == 4
    last = int(rows[-1])
    col = ev[column].to_numpy().copy()
    col[last] = change if column == "gfp" else col[last] + change
    ev[column] = col
    cases = real(ev, rep, syms)  # type: ignore[arg-type]
    assert [(c.row, c.repeats) for c in cases] == [(case.row, 2), (last, 0)]
