"""What the held-lock replay reads of an events frame (analysis.heldlocks)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

GFP_DIRECT_RECLAIM = 0x400


def kind_is(col: pd.Series, values: tuple[str, ...]) -> np.ndarray:
    """``np.isin(col, values)`` for a text column, per category where it has them (a
    trace's millions of rows are compared as a few dozen category names)."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        hit = np.isin(np.asarray(col.cat.categories, dtype=object), values)
        return np.append(hit, False)[col.cat.codes.to_numpy()]  # code -1: missing
    return np.isin(col.to_numpy(), values)


def switch_baseline(events: pd.DataFrame) -> int:
    """The preempt depth the scheduler itself runs at in a voluntary sched_switch
    (the commonest one): what a sleeping switch's depth has beyond it is the task's."""
    value = events["value"].to_numpy()
    sw = events["preempt_depth"].to_numpy()[
        np.nonzero(kind_is(events["kind"], ("sched_switch",)) & (value != 0))[0]]
    return int(np.bincount(sw.astype(np.int64)).argmax()) if len(sw) else 1


def replay_rows(events: pd.DataFrame, untraced: frozenset[int]) -> np.ndarray:
    """The rows the replay reads: lock events and may-sleep events (but the untraced
    pids' own), markers, switches and gaps."""
    kind = events["kind"]
    gfp = events["gfp"].to_numpy()
    is_lock = kind_is(kind, ("lock_acquire", "lock_return", "lock_release"))
    is_sleep = kind_is(kind, ("sleep_call",)) | (
        kind_is(kind, ("alloc",)) & ((gfp & GFP_DIRECT_RECLAIM) != 0))
    is_switch = kind_is(kind, ("sched_switch",))
    # a pump's interrupts and softirqs are traced (only its own code is filtered)
    own = ~(np.isin(events["pid"].to_numpy(), list(untraced))
            & ~(events["in_hardirq"].to_numpy() | events["in_softirq"].to_numpy()
                | events["in_nmi"].to_numpy())) if untraced else True
    is_marker = kind_is(kind, ("marker",))  # a syscall of the task's own (user-space evidence)
    is_gap = kind_is(kind, ("gap",))  # events are missing here (tracer.schema)
    return np.nonzero(((is_lock | is_sleep | is_marker) & own) | is_switch | is_gap)[0]


def replay_inputs(events: pd.DataFrame, untraced: frozenset[int]
                   ) -> tuple[np.ndarray, tuple[list[Any], ...]]:
    """(the rows the replay reads, those rows' columns as lists: pid, cpu, ts_ns,
    lock_addr, irqs_off, bh_off, in_hardirq, in_softirq, in_nmi, preempt_depth, kind,
    lock_type, lock_flags, value, event, target_pid).  Lists, because the loop reads one
    element per event and a list index is the fastest read Python has."""
    rows = replay_rows(events, untraced)

    def col(name: str) -> list[Any]:
        return events[name].to_numpy()[rows].tolist()

    return rows, (
        col("pid"), col("cpu"), col("ts_ns"), col("lock_addr"), col("irqs_off"),
        col("bh_off"), col("in_hardirq"), col("in_softirq"), col("in_nmi"),
        col("preempt_depth"), col("kind"), col("lock_type"), col("lock_flags"),
        col("value"), col("event"), col("target_pid"))


def task_key(pid: int, cpu: int) -> int:
    """Whose held locks an event is about: its task, or its CPU's idle task (pid 0)."""
    return pid if pid > 0 else -1 - cpu


def task_contexts(events: pd.DataFrame, rows: np.ndarray) -> tuple[list[int], list[str]]:
    """The replay's (task, IRQ context) keys of event rows, for passes after it."""
    e = {c: events[c].to_numpy()[rows] for c in ("pid", "cpu", "in_hardirq", "in_softirq",
                                                  "in_nmi")}
    # task_key and irq_context over the rows at once (a window has ~10^5 such rows)
    pid = e["pid"].astype(np.int64)
    tasks = np.where(pid > 0, pid, -1 - e["cpu"].astype(np.int64))
    code = np.where(e["in_nmi"], 3, np.where(e["in_hardirq"], 2,
                                             np.where(e["in_softirq"], 1, 0)))
    return tasks.tolist(), _CONTEXTS[code].tolist()


_CONTEXTS = np.array(["process", "softirq", "hardirq", "nmi"], dtype=object)


def irq_context(hard: bool, soft: bool, nmi: bool) -> str:
    if nmi:
        return "nmi"
    if hard:
        return "hardirq"
    if soft:
        return "softirq"
    return "process"
