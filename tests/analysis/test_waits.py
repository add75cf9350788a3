"""Wait edges (analysis.waits) on the recorded real trace of td_waitdep_bug.

The fixture (tests/data/traces/rules/td_waitdep_bug, cut from a real run of the
bundled drivers) holds five cycles through a wait: a work item, a timer, a
completion, a kthread and a workqueue, each closed by a wait on an idle object.
Each test changes the recorded events the way a real trace could differ (a gap,
a completion its own waiter signals, an object with no class, a trylock) and
checks what the rule then says: damage and doubt remove edges, never add them.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from recorded_fixture import load_fixture, row_classes
from recorded_traces import rows_of, with_gap_inside

from tracedep.analysis.pipeline import analyze
from tracedep.analysis.trace_model import Trace
from tracedep.tracer import schema

FIXTURE = Path(__file__).parents[1] / "data" / "traces" / "rules" / "td_waitdep_bug"
CLEAN = FIXTURE.parent / "td_waitdep_clean"
SHAPES = {"work": "cancel_work_sync() on (work_completion)", "timer": "timer_delete_sync() on",
          "completion": "wait_for_completion() on (completion)",
          "kthread": "kthread_stop() on (kthread)", "workqueue": "flush_workqueue() on"}


def waits_of(t: Trace) -> dict[str, list[str]]:
    """Each shape's findings (by the wait that closes them)."""
    found = [f.to_json() for f in analyze(t).findings]
    out: dict[str, list[str]] = {k: [] for k in SHAPES}
    for f in found:
        for w in f["details"].get("waits", []):
            for shape, api in SHAPES.items():
                if w.startswith(api):
                    out[shape].append(f["signature"])
    return out


def test_every_shape_is_one_cycle_with_both_sides_witnessed() -> None:
    t = load_fixture(FIXTURE)
    got = waits_of(t)
    assert all(len(v) == 1 for v in got.values()), got
    for f in analyze(load_fixture(FIXTURE)).findings:
        roles = [s.role for s in f.sites]
        # the wait and the lock it held; the other side and what it took or held
        assert any("waits for" in r for r in roles), roles
        assert any(("acquired by the function" in r) or ("signals" in r) for r in roles), roles
        assert all(s.frames and s.frames[0].module == "td_waitdep_bug" for s in f.sites
                   if "kthread_should_stop" not in s.role), [s.frames[:1] for s in f.sites]


def test_the_clean_twin_has_waits_but_no_cycle() -> None:
    t = load_fixture(CLEAN)
    assert len(rows_of(t, kind="wait")) >= 5
    assert analyze(t).findings == []


@pytest.mark.parametrize("shape", ["work", "timer"])
def test_a_gap_inside_the_callback_loses_that_cycle_only(shape: str) -> None:
    got = waits_of(with_gap_inside(load_fixture(FIXTURE), shape))
    assert got[shape] == []
    # a gap ends every hold everywhere: the other shapes may lose witnesses they
    # held across it, but nothing new appears
    assert all(len(v) <= 1 for v in got.values()), got


def test_a_completion_its_waiter_signals_itself_is_no_dependency() -> None:
    """rcu_barrier() completes its own completion before waiting on it, holding its
    mutex: the completer then needs nothing from another context."""
    t = load_fixture(FIXTURE)
    sig = rows_of(t, kind="signal", lock_type="completion", func="complete_all")
    assert len(sig) == 1
    # the same task also waits for it (a copy of the signal row as a wait of its own)
    w = sig.copy()
    w["kind"] = "wait"
    w["func"] = "wait_for_completion"
    w["ts_ns"] += 1
    t.events = schema.conform(pd.concat([t.events, w], ignore_index=True)
                              .sort_values(["ts_ns", "cpu"], kind="stable"))
    got = waits_of(t)
    assert got["completion"] == [] and all(len(got[k]) == 1 for k in SHAPES
                                           if k != "completion"), got


def test_an_object_known_only_by_address_gets_no_class() -> None:
    """An on-stack completion's address is shared by whatever lived there before:
    no class, no edge."""
    t = load_fixture(FIXTURE)
    ev = t.events
    sel = (ev["lock_type"].astype(str) == "completion") & (ev["lock_addr"] != 0)
    ready = rows_of(t, kind="signal", func="complete_all")["lock_addr"].iloc[0]
    stack_like = 0xFFFFC90000ABC000  # no symbol, no allocation event covers it
    t.events.loc[sel & (ev["lock_addr"] == ready), "lock_addr"] = stack_like
    assert waits_of(t)["completion"] == []


def test_a_trylock_in_the_callback_adds_no_edge() -> None:
    t = load_fixture(FIXTURE)
    ev = t.events
    start = rows_of(t, kind="callback_entry", lock_type="work")
    fn_rows = ev.index[(ev["kind"].astype(str) == "lock_acquire")
                       & ev["pid"].isin(start["pid"].unique())
                       & (ev["lock_type"].astype(str) == "mutex")]
    ev.loc[fn_rows, "lock_flags"] = "trylock"
    assert waits_of(t)["work"] == []


@pytest.mark.parametrize("fixture", [FIXTURE, CLEAN])
def test_questions_asked_at_once_agree_with_each_question(fixture: Path) -> None:
    """_Holds.any_open (all questions in one pass) says False only where held() finds
    nothing, on the real trace's wait and signal rows and on every row besides."""
    import numpy as np

    from tracedep.analysis.heldlocks import replay, task_contexts
    from tracedep.analysis.waits import _Holds

    t = load_fixture(fixture)
    ev = t.events
    classes, _ = row_classes(t)
    rep = replay(ev, classes, untraced=frozenset(t.info.untraced_pids))
    rows = np.arange(len(ev))
    tasks, ctxs = task_contexts(ev, rows)
    holds = _Holds(rep, set(tasks), ev["ts_ns"].to_numpy())
    asks = holds.any_open(tasks, ctxs, rows)
    held = [bool(holds.held(tasks[j], ctxs[j], int(rows[j]))) for j in range(len(rows))]
    assert not any(h and not a for h, a in zip(held, asks, strict=True))
    assert any(held) and not all(asks)  # both answers occur: the check says something
