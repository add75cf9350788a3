"""sleep_rules judges each distinct may-sleep incident once (its verdict key) and
counts the repeats: a driver that sleeps in atomic context in a loop costs what its
code paths cost, not what its iterations cost.  On the recorded bug fixtures of
tests/data/traces/rules (real runs): the sleeps of the replay repeated k times give
the same findings, each counted k times, and are symbolized no more often than once."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from recorded_fixture import rules_ctx

from tracedep.analysis import sleep_rules
from tracedep.analysis.rules import Ctx

RULES = Path(__file__).parents[1] / "data" / "traces" / "rules"
SLEEPERS = ["td_alloc_spin_bug", "td_mutex_spin_bug", "td_irqoff_sleep_bug",
            "td_percpu_sleep_bug", "td_flush_spin_bug", "td_timer_sleep_bug"]
REPEAT = 40


def _ctx(module: str) -> Ctx:
    ctx: Ctx = rules_ctx(RULES / module)
    return ctx


@pytest.mark.parametrize("module", SLEEPERS)
def test_repeated_sleeps_are_counted_not_judged_again(module: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    cx = _ctx(module)
    once = sleep_rules.sleep_findings(cx)
    assert once, f"{module}: the fixture has no sleep-in-atomic finding"
    judged: list[int] = []
    frames_of = Ctx.stack_frames

    def counting(self: Ctx, r: int) -> object:
        judged.append(r)
        return frames_of(self, r)

    monkeypatch.setattr(Ctx, "stack_frames", counting)
    loop = replace(cx, replay=replace(cx.replay, sleeps=cx.replay.sleeps * REPEAT))
    many = sleep_rules.sleep_findings(loop)
    assert [f.to_json() | {"count": 0} for f in many] == [
        f.to_json() | {"count": 0} for f in once]
    assert [f.count for f in many] == [f.count * REPEAT for f in once]
    # each distinct sleep symbolized once (its repeats share its verdict key)
    assert len(judged) <= len(cx.replay.sleeps), (len(judged), len(cx.replay.sleeps))
