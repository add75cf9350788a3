"""The wait graph a window at a time (analysis.wait_stream) against the whole frame's.

Every recorded trace, and the td_waitdep_bug trace changed the ways tests/analysis/
test_waits.py changes it (a gap in a callback, a completion its waiter signals after
the signal, a flush known by pointer whose workqueue a later queueing names), is cut
into windows of 1, 3 and 64 rows; the builder fed window by window must give the
graph ``waits.wait_graph`` gives over the whole frame: classes, kinds, edges, their
order, witnesses and counts.  The classes and the holds are the whole trace's, as a
stream gets them from its class plan and its replay.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
import waits_reference
from recorded_fixture import load_fixture
from recorded_traces import DATA, FIXTURES, RUNS, load_any, rows_of, with_gap_inside

from tracedep.analysis import classes as lock_classes
from tracedep.analysis import pipeline, waits
from tracedep.analysis.hold_stream import HoldStream
from tracedep.analysis.trace_model import Trace
from tracedep.analysis.wait_stream import WaitBuilder, WaitGraph
from tracedep.tracer import schema

FIXTURE = DATA / "rules" / "td_waitdep_bug"


def _inputs(t: Trace) -> dict[str, Any]:
    """What the pipeline hands the wait graph for this trace."""
    seen: list[dict[str, Any]] = []
    real = waits.wait_graph

    def spy(ev, symbols, rep, base, namer=None):  # type: ignore[no-untyped-def]
        seen.append({"ev": ev, "symbols": symbols, "rep": rep, "base": base, "namer": namer})
        return real(ev, symbols, rep, base, namer)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(waits, "wait_graph", spy)
        pipeline.analyze(t)
    [got] = seen
    return got


def _object_classes(inp: dict[str, Any], obj: np.ndarray
                    ) -> tuple[waits.ObjectRows, dict[int, int], list[Any]]:
    """The object rows, and the whole trace's class of each with an address (what a
    stream's class plan gives)."""
    ev = inp["ev"]
    probe = waits.object_rows(ev, obj, 0, lambda at: (np.zeros(len(at), np.int64), []))
    with_addr = obj[probe.has_addr()]
    ids, table = lock_classes.assign(ev, inp["symbols"], with_addr, inp["namer"])
    return probe, dict(zip(with_addr.tolist(), ids.tolist(), strict=True)), table


def _windowed(inp: dict[str, Any], size: int, streamed: bool = False) -> WaitGraph:
    """The builder fed windows of ``size`` rows; holds from the whole replay, or
    (``streamed``) from what a replay would have said at each window's end: the
    acquisitions that ended in it (with their end) and those still open (ending beyond
    it), nothing else."""
    ev, rep = inp["ev"], inp["rep"]
    kinds = ev["kind"]
    obj = np.nonzero(kinds.isin(waits.OBJECT_KINDS).to_numpy())[0]
    gaps = np.nonzero((kinds == "gap").to_numpy())[0]
    b = WaitBuilder(inp["base"])
    if not len(obj):
        return b.finish()
    probe, cls_of, table = _object_classes(inp, obj)
    whole = waits._Holds(rep, set(probe.tasks), ev["ts_ns"].to_numpy())
    acqs = rep.acquisitions.assign(acq=np.arange(len(rep.acquisitions), dtype=np.int64))
    start = acqs["row"].to_numpy(dtype=np.int64)
    end = waits.hold_ends(rep, ev["ts_ns"].to_numpy())
    hs = HoldStream()
    for lo in range(0, len(ev), size):
        hi = min(lo + size, len(ev))
        local = obj[(obj >= lo) & (obj < hi)] - lo
        o = waits.object_rows(ev.iloc[lo:hi], local, lo, lambda at, lo=lo: (
            np.array([cls_of[int(r) + lo] for r in at], np.int64), table))
        if not streamed:
            b.feed(o, whole, gaps[(gaps >= lo) & (gaps < hi)])
            continue
        seen = (start < hi) & (end >= lo)
        cand = acqs[seen]
        shown = np.where(end[seen] < hi, end[seen], waits._FAR)
        b.feed(o, hs.window(cand, shown, set(o.tasks)), gaps[(gaps >= lo) & (gaps < hi)])
        hs.keep(cand, b.open_span_starts())
    return b.finish()


def _own_wait_after_signal(t: Trace) -> Trace:
    """The completion signalled with a lock held is waited for by its own signaller,
    later (rcu_barrier()'s shape): the signal's edges must go, though its window came
    before the wait's."""
    sig = rows_of(t, kind="signal", lock_type="completion", func="complete_all")
    w = sig.copy()
    w["kind"], w["func"] = "wait", "wait_for_completion"
    w["ts_ns"] += 1
    t.events = schema.conform(pd.concat([t.events, w], ignore_index=True)
                              .sort_values(["ts_ns", "cpu"], kind="stable"))
    return t


def _flush_named_later(t: Trace) -> Trace:
    """The workqueue flush known by pointer only (a probe without the name's offset);
    its name comes from a queueing pair (``__queue_work`` with the pointer, then the
    queue_work tracepoint with the name) after it."""
    ev = t.events
    flush = rows_of(t, kind="wait", lock_type="workqueue")
    assert len(flush)
    i = flush.index[0]
    ptr = 0xFFFF888001234000
    name = str(ev.at[i, "lock_name"])
    ev.loc[flush.index, "lock_addr"] = ptr
    ev.loc[flush.index, "lock_name"] = ""
    pair = rows_of(t, kind="work_queued").iloc[[0, 0]].copy()  # the columns' own types
    end = int(ev["ts_ns"].iloc[-1])
    pair["ts_ns"] = [end + 1, end + 2]
    pair["lock_addr"] = np.array([0x1234, 0x1234], dtype=pair["lock_addr"].dtype)
    pair["ptr"] = np.array([ptr, 0], dtype=pair["ptr"].dtype)
    pair["lock_name"] = ["", name]
    t.events = schema.conform(pd.concat([ev, pair], ignore_index=True))
    return t


CHANGED = {"gap-in-work": lambda t: with_gap_inside(t, "work"),
           "gap-in-timer": lambda t: with_gap_inside(t, "timer"),
           "own-wait-after-signal": _own_wait_after_signal,
           "flush-named-later": _flush_named_later}
TRACES = [*(str(p.relative_to(DATA)) for p in FIXTURES + RUNS), *CHANGED]


def _trace(which: str) -> Trace:
    if which in CHANGED:
        return CHANGED[which](load_fixture(FIXTURE))
    return load_any(DATA / which)


@pytest.mark.parametrize("which", TRACES)
def test_windows_give_the_whole_frames_graph(which: str) -> None:
    inp = _inputs(_trace(which))
    whole = waits_reference.wait_graph(inp["ev"], inp["symbols"], inp["rep"], inp["base"],
                                       inp["namer"])
    assert waits.wait_graph(inp["ev"], inp["symbols"], inp["rep"], inp["base"],
                            inp["namer"]) == whole
    for size in (1, 3, 64):
        assert _windowed(inp, size) == whole, size


def test_the_changed_traces_change_the_graph() -> None:
    """Each change does what it says: the whole frame's graph differs from the
    unchanged trace's (else the windows above test nothing new)."""
    base = _inputs(load_fixture(FIXTURE))
    plain = waits.wait_graph(base["ev"], base["symbols"], base["rep"], base["base"])
    assert plain.edges
    for name in set(CHANGED) - {"flush-named-later"}:
        inp = _inputs(_trace(name))
        got = waits.wait_graph(inp["ev"], inp["symbols"], inp["rep"], inp["base"])
        assert got != plain, name
    # ... but a flush whose name comes later is the flush the unchanged trace has
    named = _inputs(_trace("flush-named-later"))
    g = waits.wait_graph(named["ev"], named["symbols"], named["rep"], named["base"])
    assert g == plain


@pytest.mark.parametrize("which", TRACES)
def test_holds_a_window_at_a_time_give_the_whole_frames_graph(which: str) -> None:
    inp = _inputs(_trace(which))
    whole = waits_reference.wait_graph(inp["ev"], inp["symbols"], inp["rep"], inp["base"],
                                       inp["namer"])
    for size in (1, 3, 64, 1 << 20):
        assert _windowed(inp, size, streamed=True) == whole, size
