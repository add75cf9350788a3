"""analysis.sleep_fold: a stream keeps one sleep per verdict and counts the rest, and the
rule then finds what it finds over every sleep.

On the recorded bug fixtures of tests/data/traces/rules (real runs of the bundled
drivers), the replay's sleeps are folded window by window, in windows of 1 row (every
might_sleep() waits across windows for the millisecond after it), 7 rows and the whole
trace; the sleep findings over the folded sleeps must be those over all of them, with
the same counts and witnesses.  The sleeps repeated (a driver in a loop) fold into as
many as there were distinct ones."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import pytest
from recorded_fixture import rules_ctx

from tracedep.analysis import sleep_rules
from tracedep.analysis.replay_types import SleepEvent
from tracedep.analysis.rules import Ctx
from tracedep.analysis.sleep_fold import SleepFold

RULES = Path(__file__).parents[1] / "data" / "traces" / "rules"
SLEEPERS = ["td_alloc_spin_bug", "td_mutex_spin_bug", "td_irqoff_sleep_bug",
            "td_percpu_sleep_bug", "td_flush_spin_bug", "td_timer_sleep_bug",
            "td_wait_spin_bug", "td_softirq_bug", "td_hardirq_bug"]


def _ctx(module: str) -> Ctx:
    ctx: Ctx = rules_ctx(RULES / module)
    return ctx


def _folded(cx: Ctx, sleeps: list[SleepEvent], size: int) -> list[SleepEvent]:
    """``sleeps`` through a fold, the trace cut into windows of ``size`` rows."""
    fold = SleepFold(cx.stacks, cx.symbols)
    ev = cx.events
    acq_cls = cx.replay.acquisitions["cls"].to_numpy()
    ts = ev["ts_ns"].to_numpy()
    todo = sorted((copy.deepcopy(s) for s in sleeps), key=lambda s: s.row)
    for a in range(0, len(ev), size):
        mine = [s for s in todo if a <= s.row < a + size]
        fold.add(mine, ev.iloc[a:a + size].reset_index(drop=True), a,
                 lambda ids: [int(acq_cls[i]) for i in ids])
        fold.window_end(int(ts[min(a + size, len(ev)) - 1]))
    return fold.finish()


def _json(findings: list) -> list:
    return [f.to_json() for f in findings]


@pytest.mark.parametrize("size", [1, 7, None], ids=["1-row", "7-rows", "whole"])
@pytest.mark.parametrize("module", SLEEPERS)
def test_folded_sleeps_give_the_findings_of_all(module: str, size: int | None) -> None:
    cx = _ctx(module)
    want = sleep_rules.sleep_findings(cx)
    if module in SLEEPERS[:6]:
        assert want, f"{module}: the fixture has no sleep-in-atomic finding"
    folded = _folded(cx, cx.replay.sleeps, size or len(cx.events))
    got = sleep_rules.sleep_findings(replace(cx, replay=replace(cx.replay, sleeps=folded)))
    assert _json(got) == _json(want)
    assert sum(s.repeats for s in folded) == len(cx.replay.sleeps)
    assert all(s.folded for s in folded)


@pytest.mark.parametrize("module", SLEEPERS[:6])
def test_a_driver_in_a_loop_folds_to_its_distinct_sleeps(module: str) -> None:
    """Every sleep repeated 40 times at its own row (as a loop gives the same verdict
    again): the fold keeps no more than the sleeps once, each counting 40."""
    cx = _ctx(module)
    once = _folded(cx, cx.replay.sleeps, len(cx.events))
    many = _folded(cx, cx.replay.sleeps * 40, 5)
    assert len(many) == len(once) <= len(cx.replay.sleeps)
    assert [s.repeats for s in many] == [40 * s.repeats for s in once]
    got = sleep_rules.sleep_findings(replace(cx, replay=replace(cx.replay, sleeps=many)))
    want = sleep_rules.sleep_findings(cx)
    assert [f.count for f in got] == [40 * f.count for f in want]


def test_a_might_sleep_waits_for_the_millisecond_after_it() -> None:
    """The might_sleep() rows of a fixture, with and without another may-sleep call of
    its task just after it: the fold's ``around`` is what the rule's neighbours say."""
    cx = _ctx("td_mutex_spin_bug")
    ev = sleep_rules._SleepEvents.of(cx)
    folded = _folded(cx, cx.replay.sleeps, 1)
    by_row = {s.row: s for s in folded}
    checked = 0
    for s in cx.replay.sleeps:
        if s.row in by_row:
            assert by_row[s.row].around == sleep_rules.around_of(ev, s.row), s.row
            checked += 1
    assert checked


@pytest.mark.parametrize("size", [1, 7])
def test_a_might_sleep_alone_is_its_own_incident(size: int) -> None:
    """The same fixture with only its might_sleep() sleeps: no other call of the task is
    near any of them, which the fold can only know once the trace is a millisecond past
    each (windows of 1 and 7 rows end well before that)."""
    cx = _ctx("td_mutex_spin_bug")
    ev0 = sleep_rules._SleepEvents.of(cx)
    alone = [s for s in cx.replay.sleeps if ev0.is_might_sleep(s.row)]
    assert alone, "the fixture has no might_sleep() in atomic context"
    cx = replace(cx, replay=replace(cx.replay, sleeps=alone))
    ev = sleep_rules._SleepEvents.of(cx)
    assert not any(sleep_rules.around_of(ev, s.row) for s in alone)
    folded = _folded(cx, alone, size)
    assert [s.around for s in folded] == [False] * len(folded)
    got = sleep_rules.sleep_findings(replace(cx, replay=replace(cx.replay, sleeps=folded)))
    want = sleep_rules.sleep_findings(cx)
    assert want and _json(got) == _json(want)
