"""Witness stacks cut where the incident is: tests/data/stacks/ holds real stacks."""

from __future__ import annotations

import json
from pathlib import Path

from tracedep.analysis.findings import Frame
from tracedep.analysis.text_symbols import TextSym, build_symbols
from tracedep.analysis.witness import clean_stack, clean_text_stack

DATA = Path(__file__).parents[1] / "data" / "stacks"
CALL_INSN_SIZE = 5  # x86_64


def _recorded(name: str) -> tuple[dict, list]:
    d = json.loads((DATA / name).read_text())
    return d, d["symbols"]


def test_interrupt_inside_tracing_code_is_not_the_incident() -> None:
    # The timer callback's kmalloc is the incident; the tracing frames of the task
    # the interrupt landed in (a kprobe on __cond_resched in port_fops_write) are
    # below the interrupt entry and must not be taken for this event's prefix.
    d, syms = _recorded("irq_inside_tracing.json")
    printed = [TextSym(s[2], 0, s[1], None if s[3] == "vmlinux" else s[3], s[0])
               for s in syms if s is not None]
    symbols, _ = build_symbols([], printed)
    frames = clean_stack(symbols, tuple(d["stack"]), CALL_INSN_SIZE, d["event"]["ts_ns"])
    names = [f.function for f in frames]
    assert names[:2] == ["kmalloc_trace", "td_wdog_timer_fn"], names
    assert frames[1].module == "td_timer_sleep_bug"
    assert names[-1] == "handle_softirqs"  # witnesses end where interrupt context begins
    assert "alloc_buf.constprop.0" not in names and "port_fops_write" not in names


def test_text_stack_of_the_same_interrupt() -> None:
    _, syms = _recorded("irq_inside_tracing.json")
    stack = tuple(Frame(function=s[2] if s else "0xffffffffc02470c8", offset=0, size=0,
                        module=s[3] if s else "?") for s in syms)
    names = [f.function for f in clean_text_stack(stack, CALL_INSN_SIZE)]
    assert names[:2] == ["kmalloc_trace", "td_wdog_timer_fn"], names
    assert "port_fops_write" not in names
