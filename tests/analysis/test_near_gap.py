"""Findings near a gap in the trace say so (analysis.pipeline.mark_near_gaps).

The run is the recorded real trace of td_abba_bug (tests/data/traces/rules/),
whose AB/BA cycle is found.  A gap row (what the decoder leaves where events are
missing: a page not read whole, lost events, a rejected record) is put after the
last witness: the finding stands, since nothing before the gap changed, and says
a gap is near; a gap far from it, or none, leaves it unmarked.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from recorded_fixture import load_fixture

from tracedep.analysis.pipeline import NEAR_GAP_NS, analyze
from tracedep.tracer import schema
from tracedep.tracer.ftrace_binary import GAP_EVENT

FIXTURE = Path(__file__).parents[1] / "data" / "traces" / "rules" / "td_abba_bug"


def _with_gap(after_ns: int) -> list[dict]:  # type: ignore[type-arg]
    t = load_fixture(FIXTURE)
    base = analyze(load_fixture(FIXTURE)).findings
    last = max(s.ts_ns for f in base for s in f.sites if s.ts_ns is not None)
    ev = t.events
    gap = schema.conform(pd.DataFrame({"ts_ns": [last + after_ns], "cpu": [0],
                                       "kind": "gap", "event": GAP_EVENT}))
    t.events = schema.conform(pd.concat([ev, gap], ignore_index=True)
                              .sort_values(["ts_ns", "cpu"], kind="stable"))
    return [f.to_json() for f in analyze(t).findings]


def test_undamaged_findings_are_not_marked() -> None:
    found = [f.to_json() for f in analyze(load_fixture(FIXTURE)).findings]
    assert found and all("near_gap" not in f["details"] for f in found)


def test_a_gap_near_the_witnesses_marks_the_finding() -> None:
    found = _with_gap(NEAR_GAP_NS // 2)
    assert found and all("near_gap" in f["details"] for f in found), found
    assert "1 gap(s) in the trace within" in found[0]["details"]["near_gap"]


def test_a_gap_far_away_does_not() -> None:
    found = _with_gap(10 * NEAR_GAP_NS)
    assert found and all("near_gap" not in f["details"] for f in found)
