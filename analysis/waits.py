"""Wait dependencies: edges of the class graph through a wait, on any kernel.

A task that holds lock L and waits for another context deadlocks when that
context needs L before it can finish.  lockdep sees some of these through its
pseudo-locks on a lockdep kernel only; here each waited-for object is a class of
its own in the class graph (``analysis.order_rules`` finds the cycles):

* ``L -> (work_completion)(W)``: ``flush_work(W)``/``cancel_work_sync(W)`` … called
  while L is held; ``(work_completion)(W) -> M``: W's function took M;
* ``L -> (wq_completion)Q``: ``flush_workqueue(Q)`` (drain, destroy) with L held;
  ``(wq_completion)Q -> M``: a work item queued on Q took M;
* ``L -> (timer)(T)``: ``del_timer_sync(T)`` with L held; ``(timer)(T) -> M``: T's
  callback took M;
* ``L -> (completion)(C)``: a wait for C with L held; ``(completion)(C) -> M``:
  ``complete(C)`` was called with M held (DEPT's reading of a completion);
* ``L -> (kthread)K``: ``kthread_stop(K)`` with L held; ``(kthread)K -> M``: K
  looked for its stop (``kthread_should_stop()``) with M held.

Objects get classes as locks do (``analysis.classes``: the static symbol, the
type and member of a heap object); a workqueue is its name and a kthread its
comm.  Trylocks add no edge (they cannot block).  A callback span with a gap in it
adds nothing: damage can lose an edge, never make one up.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from tracedep.analysis import classes as lock_classes
from tracedep.analysis.acquisitions import text_codes
from tracedep.analysis.findings import Site, WitnessKind
from tracedep.analysis.heldlocks import SHARED_TYPES, EdgeAcc, Replay, task_contexts
from tracedep.analysis.rules import Ctx
from tracedep.analysis.run_symbols import RunSymbols

# lockdep's names for the pseudo-locks (kernel/workqueue.c, kernel/time/timer.c)
PREFIX = {"work": "(work_completion)", "workqueue": "(wq_completion)", "timer": "(timer)",
          "completion": "(completion)", "kthread": "(kthread)"}
OBJECT_KINDS = ("wait", "signal", "work_queued", "callback_entry", "callback_exit")
_FAR = np.iinfo(np.int64).max
# the API a probed function implements, where the name differs (flush_workqueue() is a
# macro around __flush_workqueue() since 6.1)
_API = {"__flush_workqueue": "flush_workqueue"}


@dataclass
class WaitEdge(EdgeAcc):
    """An edge through a wait.  ``how``: ``wait`` (held lock -> object: ``row`` the
    wait call, ``held_row`` the lock's acquisition), ``runs`` (object -> a lock its
    callback took: ``row`` that acquisition, ``held_row`` the callback's start),
    ``signal`` (object -> a lock held where it was signalled: ``row`` the signal,
    ``held_row`` the lock's acquisition).  ``api``: the wait or signal function."""

    how: str = "wait"
    api: str = ""


@dataclass
class WaitGraph:
    classes: list[lock_classes.LockClass] = field(default_factory=list)  # ids from ``base``
    base: int = 0
    kinds: dict[int, str] = field(default_factory=dict)  # class id -> object kind
    edges: dict[tuple[int, int], list[EdgeAcc]] = field(default_factory=dict)


_WINDOW = 1 << 14  # rows: a hold longer than this is looked at by every question


class _Holds:
    """Which locks a (task, context) held at an event row, from the replay."""

    def __init__(self, rep: Replay, tasks: set[int], ts: np.ndarray) -> None:
        a = rep.acquisitions
        self.by: dict[tuple[int, str], tuple[np.ndarray, ...]] = {}
        # per (task, context): start order, starts in that order, the long holds
        self.index: dict[tuple[int, str], tuple[np.ndarray, ...]] = {}
        # (and the ends, sorted: how many are open at a row, in two binary searches)
        if a.empty or not tasks:
            return
        end = a["release_row"].to_numpy(dtype=np.int64).copy()
        # released where no row says (handed to a task whose events are filtered, as
        # the runqueue lock to a trace pump): the time says
        t_rel = a["ts_release"].to_numpy(dtype=np.int64)
        timed = (end < 0) & (t_rel >= 0)
        end[timed] = np.searchsorted(ts, t_rel[timed], side="left")
        for fo in rep.forced:
            end[fo.acq] = fo.row
        for acq, row in rep.irq_ended:  # an interrupt's lock whose unlock was missed
            end[acq] = row
        end[end < 0] = _FAR
        sel = np.nonzero(np.isin(a["task"].to_numpy(), list(tasks)))[0]
        # group by (task, context) with one stable sort: a busy trace has millions;
        # every column is taken once in that order and each group is a slice of it
        ctx_names, all_ctx = text_codes(a["ctx"])
        by_key = sel[np.lexsort((all_ctx[sel], a["task"].to_numpy(dtype=np.int64)[sel]))]
        del sel
        lt_names, lt_codes = text_codes(a["lock_type"])
        cols = (a["row"].to_numpy(dtype=np.int64)[by_key], end[by_key],
                a["cls"].to_numpy(dtype=np.int64)[by_key],
                a["trylock"].to_numpy(dtype=bool)[by_key],
                np.isin(lt_codes[by_key], [i for i, n in enumerate(lt_names)
                                           if n in SHARED_TYPES]))
        del end, lt_codes
        task = a["task"].to_numpy(dtype=np.int64)[by_key]
        ctx_codes = all_ctx[by_key]
        del all_ctx
        edge = np.flatnonzero((np.diff(task) != 0) | (np.diff(ctx_codes) != 0)) + 1
        bounds = [0, *edge.tolist(), len(by_key)] if len(by_key) else []
        for lo, hi in zip(bounds, bounds[1:], strict=False):
            k = (int(task[lo]), str(ctx_names[ctx_codes[lo]]))
            c = tuple(col[lo:hi] for col in cols)
            # a question is answered from the acquisitions that started near it (by
            # start row) and the few held longer than _WINDOW rows, not from all of
            # the task's: a busy kthread has millions
            order = np.argsort(c[0], kind="stable")
            self.by[k] = c
            self.index[k] = (order, c[0][order], np.nonzero(c[1] - c[0] > _WINDOW)[0],
                             np.sort(np.maximum(c[1], c[0])))

    def held(self, task: int, ctx: str, r: int) -> list[tuple[int, int, bool]]:
        """(class, acquiring row, shared) of each lock held at row ``r``."""
        got = self.by.get((task, ctx))
        if got is None:
            return []
        start, end, cls, _, shared = got
        order, s_start, long_held, s_end = self.index[(task, ctx)]
        # open = started before r and not ended by r; most questions (a kthread
        # looking for its stop between rounds) find none
        if np.searchsorted(s_start, r) - np.searchsorted(s_end, r, side="right") <= 0:
            return []
        near = order[np.searchsorted(s_start, r - _WINDOW):np.searchsorted(s_start, r)]
        cand = np.union1d(near, long_held)
        m = cand[(start[cand] < r) & (end[cand] > r) & (cls[cand] >= 0)]
        return [(int(cls[j]), int(start[j]), bool(shared[j])) for j in m]

    def any_open(self, tasks: list[int], ctxs: list[str], rows: np.ndarray) -> np.ndarray:
        """Per question (task, context, row): may a lock be held there?  The first test
        of :meth:`held`, for all questions at once (a busy kthread asks a million
        times between its rounds, with nothing held); False needs no :meth:`held`."""
        out = np.zeros(len(rows), dtype=bool)
        if not len(rows) or not self.index:
            return out
        code: dict[tuple[int, str], int] = {}
        keys = np.array([code.setdefault(k, len(code)) for k in zip(tasks, ctxs, strict=True)],
                        dtype=np.int64)
        order = np.argsort(keys, kind="stable")
        ends = np.flatnonzero(np.diff(keys[order]) != 0) + 1
        for sel in np.split(order, ends):
            got = self.index.get((tasks[sel[0]], ctxs[sel[0]]))
            if got is None:
                continue
            _, s_start, _, s_end = got
            r = rows[sel]
            out[sel] = (np.searchsorted(s_start, r) - np.searchsorted(s_end, r, side="right")) > 0
        return out

    def taken(self, task: int, ctx: str, lo: int, hi: int) -> list[tuple[int, int]]:
        """(class, acquiring row) of each blocking acquisition between two rows."""
        got = self.by.get((task, ctx))
        if got is None:
            return []
        start, _, cls, tryl, _ = got
        order, s_start, _, _ = self.index[(task, ctx)]
        cand = np.sort(order[np.searchsorted(s_start, lo, side="right"):
                             np.searchsorted(s_start, hi)])
        m = cand[~tryl[cand] & (cls[cand] >= 0)]
        return [(int(cls[j]), int(start[j])) for j in m]


# long: one pass per wait-side event kind, read best together
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


def wait_sites(cx: Ctx, acc: WaitEdge, a: str, b: str) -> tuple[Site, Site]:
    """The two witnesses of an edge ``a -> b`` through a wait, in words for the reports."""
    if acc.how == "wait":
        return (cx.site(acc.row, WitnessKind.ACQUIRE, f"{acc.api}() waits for {b} while "
                        f"holding {a}", b, with_stack=False, holding=a),
                cx.site(acc.held_row, WitnessKind.HELD, f"{a} acquired earlier", a,
                        with_stack=False))
    if acc.how == "runs":
        return (cx.site(acc.row, WitnessKind.ACQUIRE, f"{b} acquired by the function "
                        f"{a} runs", b, with_stack=False, holding=a),
                cx.site(acc.held_row, WitnessKind.HELD, f"{a} runs this function", a,
                        with_stack=False))
    return (cx.site(acc.row, WitnessKind.ACQUIRE, f"{acc.api}() signals {a} while holding "
                    f"{b}", a, with_stack=False, holding=b),
            cx.site(acc.held_row, WitnessKind.HELD, f"{b} acquired earlier", b,
                    with_stack=False))
