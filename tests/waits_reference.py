"""The wait graph over the whole frame as analysis.waits computed it before it could
stream (a8cec73), kept verbatim as the oracle of tests/analysis/test_wait_stream.py:
the streaming builder (analysis.wait_stream) must give what this gives, on every
recorded trace and every change of one the tests make.  Its edge and graph types,
prefixes and holds are imported from the product, which they have not changed in."""

# ruff: noqa
# mypy: ignore-errors
from __future__ import annotations

import numpy as np
import pandas as pd

from tracedep.analysis import classes as lock_classes
from tracedep.analysis.heldlocks import task_contexts
from tracedep.analysis.replay_types import Replay
from tracedep.analysis.run_symbols import RunSymbols
from tracedep.analysis.wait_stream import _API, PREFIX, WaitEdge, WaitGraph
from tracedep.analysis.waits import OBJECT_KINDS, _Holds


def wait_graph(ev: pd.DataFrame, symbols: RunSymbols, rep: Replay, base: int,
               namer: lock_classes.ClassNamer | None = None) -> WaitGraph:
    """The wait edges of a replayed trace; their object classes are numbered from
    ``base`` (the lock class table's length)."""
    g = WaitGraph(base=base)
    # the few rows asked about, taken before any text is made: the columns are
    # categoricals of the whole trace (tens of millions of rows)
    kinds = ev["kind"]
    rows = np.nonzero(kinds.isin(OBJECT_KINDS).to_numpy())[0]
    if not len(rows):
        return g

    def text(col: str) -> np.ndarray:
        return ev[col].iloc[rows].astype(str).to_numpy()

    ltype, name, func, kind = text("lock_type"), text("lock_name"), text("func"), text("kind")
    addr = ev["lock_addr"].to_numpy()[rows]
    value = ev["value"].to_numpy()[rows]
    tasks, ctxs = task_contexts(ev, rows)
    gap_rows = np.nonzero((kinds == "gap").to_numpy())[0]
    wq_names = _workqueue_names(kind, addr, name, ev["ptr"].to_numpy()[rows], tasks)

    intern: dict[str, int] = {}

    def obj_class(c: lock_classes.LockClass, obj: str) -> int:
        if c.origin == "instance":
            # no symbol, initializer or allocation: the address alone, which an
            # on-stack completion shares with every other object that lived there
            return -1
        key = f"{obj}:{c.key}"
        if key not in intern:
            intern[key] = base + len(g.classes)
            # lockdep's spelling, the module that tells two alike apart after it
            plain, tag = c.name, ""
            if plain.endswith(f" [{c.module}]"):
                plain, tag = plain[:-len(c.module) - 3], f" [{c.module}]"
            shown = (f"{PREFIX[obj]}({plain}){tag}" if obj in ("work", "timer", "completion")
                     else f"{PREFIX[obj]}{plain}{tag}")
            g.classes.append(lock_classes.LockClass(shown, key, c.origin, c.module, c.detail,
                                                    sig=f"{obj}:{c.sig or c.key}"))
            g.kinds[intern[key]] = obj
        return intern[key]

    def named_class(obj: str, label: str) -> int:
        return obj_class(lock_classes.LockClass(label, label, "static", "vmlinux", sig=label),
                         obj)

    # objects with an address: classes as locks have them (not from a queueing row:
    # its lock_name is the workqueue's, which analysis.classes would take for the
    # lockdep name of the work item)
    has_addr = np.isin(ltype, ("work", "timer", "completion")) & (addr != 0) & (
        kind != "work_queued")
    oc = np.full(len(rows), -1, dtype=np.int64)
    if has_addr.any():
        ids, table = lock_classes.assign(ev, symbols, rows[has_addr], namer)
        oc[has_addr] = [obj_class(table[int(i)], str(t)) if i >= 0 else -1
                        for i, t in zip(ids, ltype[has_addr], strict=True)]

    holds = _Holds(rep, set(tasks), ev["ts_ns"].to_numpy())
    asks = holds.any_open(tasks, ctxs, rows)

    def add(u: int, v: int, row: int, held_row: int, shared: bool, how: str, api: str,
            ctx: str) -> None:
        if u == v or u < 0 or v < 0:
            return
        accs = g.edges.setdefault((u, v), [])
        for acc in accs:
            if isinstance(acc, WaitEdge) and acc.how == how and acc.before_shared == shared:
                acc.count += 1
                return
        accs.append(WaitEdge(1, row, held_row, shared, False, ctx, how=how, api=api))

    def wait_side(j: int, obj_cls: int, witness: int = -1) -> None:
        """Locks held at a wait -> the object."""
        if not asks[j]:
            return
        r = int(rows[j])
        for c, hr, sh in holds.held(tasks[j], ctxs[j], r):
            add(c, obj_cls, witness if witness >= 0 else r, hr, sh, "wait",
                _API.get(func[j], func[j]), ctxs[j])

    # a task that signals a completion it waits for itself (rcu_barrier(), a
    # kobject's release in the put before the wait) needs nothing from another
    # context: its locks are no dependency of the completion
    own_waits = {(tasks[j], int(addr[j])) for j in range(len(rows))
                 if kind[j] == "wait" and ltype[j] == "completion"}

    def signal_side(j: int, obj_cls: int) -> None:
        """The object -> locks held where it was signalled."""
        if not asks[j] or (tasks[j], int(addr[j])) in own_waits:
            return
        r = int(rows[j])
        for c, hr, _ in holds.held(tasks[j], ctxs[j], r):
            add(obj_cls, c, r, hr, False, "signal", func[j], ctxs[j])

    wq_of_work: dict[int, str] = {}
    open_spans: dict[tuple[int, str, int], list[tuple[int, str]]] = {}
    stopped: dict[int, list[tuple[int, int]]] = {}  # pid -> (stop row, kthread class)
    should_stop: list[int] = []
    stop_call: dict[int, int] = {}  # task -> its kthread_stop() call's row (the call site)
    for j in range(len(rows)):
        k, lt = kind[j], ltype[j]
        if k == "wait":
            if lt == "workqueue":
                wq = name[j] or wq_names.get(int(addr[j]), "")
                if wq:
                    wait_side(j, named_class("workqueue", wq))
            elif lt == "kthread" and addr[j]:
                stop_call[tasks[j]] = int(rows[j])  # the probe: the tracepoint follows
            elif lt == "kthread":
                kc = named_class("kthread", name[j] or f"pid {int(value[j])}")
                stopped.setdefault(int(value[j]), []).append((int(rows[j]), kc))
                wait_side(j, kc, stop_call.pop(tasks[j], -1))
            elif oc[j] >= 0:
                wait_side(j, int(oc[j]))
        elif k == "signal":
            if lt == "kthread":
                should_stop.append(j)
            elif oc[j] >= 0:
                signal_side(j, int(oc[j]))
        elif k == "work_queued":
            if name[j]:
                wq_of_work[int(addr[j])] = name[j]
        elif k == "callback_entry":
            wq = wq_of_work.get(int(addr[j]), "") if lt == "work" else ""
            open_spans.setdefault((tasks[j], ctxs[j], int(addr[j])), []).append((j, wq))
        elif k == "callback_exit":
            st = open_spans.get((tasks[j], ctxs[j], int(addr[j])))
            if not st:
                continue
            s, wq = st.pop()
            lo, hi = int(rows[s]), int(rows[j])
            if len(gap_rows) and np.any((gap_rows > lo) & (gap_rows < hi)):
                continue
            runs = [int(oc[s])] if oc[s] >= 0 else []
            if wq:
                runs.append(named_class("workqueue", wq))
            for c, hr in holds.taken(tasks[s], ctxs[s], lo, hi):
                for obj_cls in runs:
                    add(obj_cls, c, hr, lo, False, "runs", "", ctxs[s])
    # a kthread's looks for its stop, once it is known which thread was stopped
    for j in should_stop:
        r = int(rows[j])
        later = [kc for sr, kc in stopped.get(tasks[j], []) if sr > r]
        if later:
            signal_side(j, later[0])
    return g


def _workqueue_names(kind: np.ndarray, addr: np.ndarray, name: np.ndarray, ptr: np.ndarray,
                     tasks: list[int]) -> dict[int, str]:
    """Workqueue pointer -> name: the ``__queue_work`` probe names the workqueue by
    pointer, the queue_work tracepoint inside it by name, for the same work item.  A
    flush whose probe could not read the name (no BTF offset) is named so."""
    out: dict[int, str] = {}
    pending: dict[tuple[int, int], int] = {}
    for j in np.nonzero(kind == "work_queued")[0].tolist():
        if ptr[j]:
            pending[(tasks[j], int(addr[j]))] = int(ptr[j])
        elif name[j]:
            wq = pending.pop((tasks[j], int(addr[j])), 0)
            if wq:
                out.setdefault(wq, str(name[j]))
    return out
