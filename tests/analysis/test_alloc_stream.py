"""PREEMPT_RT allocation cases a window at a time (analysis.alloc_stream) against the
whole frame's (rt_rules.allocation_cases).

Each recorded trace is cut into windows of 5 and 64 rows, and the whole; after each
window the stream sees what a replay would have said then: the acquisitions that
ended in it, with their final fields, and those still open, with the fields an open
acquisition has (no release yet).  The cases (row, held locks, repeats) must be the
whole frame's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from recorded_traces import DATA, FIXTURES, RUNS, load_any

from tracedep.analysis import pipeline, rt_rules, waits
from tracedep.analysis.alloc_stream import AllocationStream
from tracedep.analysis.replay_types import Replay
from tracedep.analysis.row_store import AllocationCase
from tracedep.analysis.trace_model import Trace


def _whole(path: Path | Trace) -> tuple[pd.DataFrame, Replay, object]:
    """The frame, replay and symbols the pipeline reads this trace's cases from."""
    seen: list[tuple[pd.DataFrame, Replay, object]] = []
    real = waits.wait_graph

    def spy(ev, symbols, rep, base, namer=None):  # type: ignore[no-untyped-def]
        seen.append((ev, rep, symbols))
        return real(ev, symbols, rep, base, namer)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(waits, "wait_graph", spy)
        pipeline.analyze(path if isinstance(path, Trace) else load_any(path))
    return seen[0]


def _streamed(ev: pd.DataFrame, rep: Replay, symbols, size: int  # type: ignore[no-untyped-def]
              ) -> list[AllocationCase]:
    acqs = rep.acquisitions.assign(acq=np.arange(len(rep.acquisitions), dtype=np.int64))
    start = acqs["row"].to_numpy(dtype=np.int64)
    end = waits.hold_ends(rep, ev["ts_ns"].to_numpy())  # where the replay settles each
    # an open acquisition as the replay shows it: not released, not forced, not handed
    still = acqs.copy()
    still["release_row"] = -1
    still["ts_release"] = -1
    still["forced"] = pd.Categorical([""] * len(still), categories=acqs["forced"].cat.categories
                                     if isinstance(acqs["forced"].dtype, pd.CategoricalDtype)
                                     else None)
    still["handed_off"] = np.zeros(len(still), dtype=acqs["handed_off"].dtype)
    s = AllocationStream(symbols)
    for lo in range(0, len(ev), size):
        hi = min(lo + size, len(ev))
        ended = (start < hi) & (end >= lo) & (end < hi)
        open_ = (start < hi) & (end >= hi)
        cand = pd.concat([acqs[ended], still[open_]]).sort_values("acq")
        s.feed(ev.iloc[lo:hi], lo, cand, acqs[ended])
    rest = acqs[end >= len(ev)]
    return s.finish(rest)


@pytest.mark.parametrize("path", FIXTURES + RUNS,
                         ids=[str(p.relative_to(DATA)) for p in FIXTURES + RUNS])
def test_windows_give_the_whole_frames_cases(path) -> None:  # type: ignore[no-untyped-def]
    ev, rep, symbols = _whole(path)
    whole = rt_rules.allocation_cases(ev, rep, symbols)  # type: ignore[arg-type]
    for size in (5, 64, 1 << 20):
        assert _streamed(ev, rep, symbols, size) == whole, size


def test_some_trace_has_cases_with_repeats() -> None:
    ev, rep, symbols = _whole(DATA / "rules" / "td_alloc_spin_clean")
    [case] = rt_rules.allocation_cases(ev, rep, symbols)  # type: ignore[arg-type]
    assert case.repeats == 3 and case.held


def test_a_lock_never_seen_released_waits_and_then_does_not_count() -> None:
    """td_alloc_spin_clean with the release of the lock held at its last allocation
    cut out (a missed unlock): that allocation is no case, as in the whole frame; a
    window that ends with the lock still held must not count it before it knows."""
    ev, rep, symbols = _whole(DATA / "rules" / "td_alloc_spin_clean")
    [case] = rt_rules.allocation_cases(ev, rep, symbols)  # type: ignore[arg-type]
    a = rep.acquisitions
    allocs = np.nonzero(((ev["kind"] == "alloc") & (ev["ip"] == ev["ip"].iat[case.row]))
                        .to_numpy())[0]
    last = int(allocs[-1])
    held = a[(a["row"] < last) & (a["release_row"] > last)
             & (a["cls"] == case.held[0][1])]
    assert len(held) == 1
    t = load_any(DATA / "rules" / "td_alloc_spin_clean")
    t.events = t.events.drop(index=int(held["release_row"].iat[0])).reset_index(drop=True)
    ev2, rep2, symbols2 = _whole(t)
    whole = rt_rules.allocation_cases(ev2, rep2, symbols2)  # type: ignore[arg-type]
    assert sum(1 + c.repeats for c in whole) == 3, whole
    for size in (5, 64):
        assert _streamed(ev2, rep2, symbols2, size) == whole, size
