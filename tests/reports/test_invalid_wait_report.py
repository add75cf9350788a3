"""invalid-wait-context (analysis.rt_rules) in the reports: lockdep's "BUG: Invalid wait
context" block, said to be about PREEMPT_RT only, with both witnesses' file:line; its
column, badge and title like every other kind."""

from __future__ import annotations

from tracedep.analysis.findings import (
    FINDING_KINDS,
    Analysis,
    Finding,
    Frame,
    Site,
    SiteContext,
    WitnessKind,
)
from tracedep.analysis.health import Health
from tracedep.analysis.run_summary import RunSummary
from tracedep.common.jsonvalue import Fields
from tracedep.reports import html, model, text

M = "td_rt_wait_bug"
SRC = "/src/td_rt_wait_bug.c"


def _site(kind: WitnessKind, role: str, lock: str | None, line: int, fn: str,
          holding: str | None = None) -> Site:
    return Site(role, (Frame(fn, 0x32, 0x80, M, SRC, line, False, 0xFFFFFFFFC0001000),), lock,
                1000 + line, 412, "tdinsmod", SiteContext(1), kind, holding)


def findings() -> list[Finding]:
    raw, spin, hw = "td_rt_stats_lock", "struct td_rt_dev.queue_lock", "struct td_rt_dev.hw_lock"
    nested = Finding(
        "invalid-wait-context", M, [raw, spin],
        [_site(WitnessKind.ACQUIRE, "acquired", spin, 60, "td_rt_account", raw),
         _site(WitnessKind.HELD, "held", raw, 57, "td_rt_account")],
        "PREEMPT_RT only: queue_lock under td_rt_stats_lock", 1057, 4,
        ("static:td_rt_stats_lock", "heap:queue_lock", "td_rt_account"),
        {"function": "td_rt_account", "held": "raw_spinlock_t", "inner": "spinlock_t",
         "api": "spinlock_t lock", "preempt_rt_only": True})
    alloc = Finding(
        "invalid-wait-context", M, [hw],
        [_site(WitnessKind.SLEEP, "allocation", None, 74, "td_rt_hw_submit", hw),
         _site(WitnessKind.HELD, "held", hw, 72, "td_rt_hw_submit")],
        "PREEMPT_RT only: kmalloc(GFP_ATOMIC) under hw_lock", 1072, 4,
        ("heap:hw_lock", "allocation", "td_rt_hw_submit"),
        {"function": "td_rt_hw_submit", "held": "raw_spinlock_t", "inner": "allocation",
         "api": "kmalloc(GFP_ATOMIC)", "preempt_rt_only": True})
    return [nested, alloc]


def test_kind_is_known_everywhere() -> None:
    assert "invalid-wait-context" in FINDING_KINDS
    assert model.kind_title("invalid-wait-context") != "invalid-wait-context"
    assert model.kind_abbrev("invalid-wait-context") != "invalid-wait-context"
    assert "invalid-wait-context" in text.RENDERERS


def test_text_block() -> None:
    a = Analysis(findings(), [], [], Health(), RunSummary())
    report = text.render_text(a)
    assert report.count("[ BUG: Invalid wait context ]") == 2
    assert report.count("PREEMPT_RT only") >= 4  # message and block, each finding
    assert "is trying to lock:" in report and "(spinlock_t)" in report
    assert "is trying to allocate: kmalloc(GFP_ATOMIC)" in report
    assert "td_rt_wait_bug.c:60" in report and "td_rt_wait_bug.c:57" in report
    assert "td_rt_wait_bug.c:74" in report and "td_rt_wait_bug.c:72" in report
    assert "1 lock held by tdinsmod/412:" in report


def test_html_and_json() -> None:
    a = Analysis(findings(), [], [], Health(), RunSummary())
    pages = html.render_site(a)
    assert "k-invalid-wait-context" in pages[f"drivers/{M}.html"]
    assert model.kind_title("invalid-wait-context") in pages["index.html"]
    for f in a.findings:
        back = Finding.from_json(Fields(f.to_json(), "finding"))
        assert back.signature == f.signature and back.details == f.details
