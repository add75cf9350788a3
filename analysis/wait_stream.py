"""The wait graph (analysis.waits) built a window of rows at a time.

:class:`WaitBuilder` takes the object rows (``waits.OBJECT_KINDS``) of each window in
time order and gives, at :meth:`WaitBuilder.finish`, the graph ``waits.wait_graph``
gives over the whole frame: the same classes in the same order, the same edges with
the same first witnesses and counts, in the same order.

Four things a row's window cannot know yet, and how they wait for the end:

* a flush of a workqueue known by pointer only, whose name a later ``queue_work``
  gives (``_workqueue_names``): kept with the locks held there;
* a signal of a completion its own task waits for, somewhere in the trace: adds only
  if no such wait exists, so its edges are kept apart per (task, object) and dropped
  at the end if one does;
* a kthread looking for its stop: which kthread class it is comes from a later
  ``kthread_stop()`` (kept with the locks held there, as the whole pass does);
* the order of the object classes: the whole pass numbers the classes of every
  object row first, then the workqueues and kthreads as its loop meets them; here
  each class keeps the place it would have and is numbered at the end.

An edge remembers where the whole pass would first have added it (its row, and the
order of adds within that row), so the first witness and the order of edges come
out the same whatever the windows.  What is kept grows with classes, edges, open
callback spans and the few deferred rows, not with rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from tracedep.analysis import classes as lock_classes
from tracedep.analysis.replay_types import EdgeAcc

# lockdep's names for the pseudo-locks (kernel/workqueue.c, kernel/time/timer.c)
PREFIX = {"work": "(work_completion)", "workqueue": "(wq_completion)", "timer": "(timer)",
          "completion": "(completion)", "kthread": "(kthread)"}
# the API a probed function implements, where the name differs (flush_workqueue() is a
# macro around __flush_workqueue() since 6.1)
_API = {"__flush_workqueue": "flush_workqueue"}
_END = 1 << 62  # the order of what the whole pass does after its loop
# where the whole pass does a thing: its row, then its turn in the pass, then within it
Order = tuple[int, int, int]


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


class Holds(Protocol):
    """Which locks a (task, context) held (waits._Holds, from the replay)."""

    def held(self, task: int, ctx: str, r: int) -> list[tuple[int, int, bool]]: ...

    def any_open(self, tasks: list[int], ctxs: list[str], rows: np.ndarray) -> np.ndarray: ...

    def taken(self, task: int, ctx: str, lo: int, hi: int) -> list[tuple[int, int]]: ...


@dataclass
class ObjectRows:
    """A window's object rows, in trace order: ``rows`` are rows of the whole trace;
    ``cls``: the class (an index into ``table``) of each row's object where it has an
    address and is not a queueing row (-1 otherwise); the rest are the rows' values."""

    rows: np.ndarray
    kind: np.ndarray
    ltype: np.ndarray
    name: np.ndarray
    func: np.ndarray
    addr: np.ndarray
    value: np.ndarray
    ptr: np.ndarray
    tasks: list[int]
    ctxs: list[str]
    cls: np.ndarray
    table: list[lock_classes.LockClass]

    def has_addr(self) -> np.ndarray:
        """The rows whose object is classed as locks are: not from a queueing row (its
        lock_name is the workqueue's, which analysis.classes would take for the
        lockdep name of the work item)."""
        return (np.isin(self.ltype, ("work", "timer", "completion")) & (self.addr != 0)
                & (self.kind != "work_queued"))


@dataclass
class _Acc:
    """An edge accumulator: where the whole pass would first add it, and the count."""

    order: Order
    row: int
    held_row: int
    ctx: str
    api: str
    count: int = 1

    def take(self, order: Order, row: int, held_row: int, ctx: str, api: str,
             count: int = 1) -> None:
        if order < self.order:
            self.order, self.row, self.held_row, self.ctx, self.api = (
                order, row, held_row, ctx, api)
        self.count += count


@dataclass
class _Deferred:
    """A row whose edges wait for the end (module docstring)."""

    order: Order
    row: int  # the witness
    task: int
    addr: int
    held: list[tuple[int, int, bool]]
    api: str
    ctx: str


# long: the whole pass's loop, one branch per object kind, read best together
class WaitBuilder:
    def __init__(self, base: int) -> None:
        self.base = base
        # object key -> (order, provisional id); LockClass and kind by provisional id
        self.intern: dict[str, tuple[Order, int]] = {}
        self.prov: list[tuple[lock_classes.LockClass, str]] = []
        self.edges: dict[tuple[int, int, str, bool], _Acc] = {}
        # signals per (task, object address): dropped if that task waits for it
        self.signals: dict[tuple[int, int], dict[tuple[int, int, str, bool], _Acc]] = {}
        self.own_waits: set[tuple[int, int]] = set()
        self.unnamed_flushes: list[_Deferred] = []
        self.should_stop: list[_Deferred] = []
        self.wq_pending: dict[tuple[int, int], int] = {}
        self.wq_names: dict[int, str] = {}
        self.wq_of_work: dict[int, str] = {}
        self.open_spans: dict[tuple[int, str, int], list[tuple[int, int, str]]] = {}
        self.stopped: dict[int, list[tuple[int, int]]] = {}  # pid -> (stop row, class)
        self.stop_call: dict[int, int] = {}  # task -> its kthread_stop() call's row
        self.gaps: list[np.ndarray] = []
        self.seq = 0

    # -- classes --------------------------------------------------------------------

    def _class(self, c: lock_classes.LockClass, obj: str, order: Order) -> int:
        key = f"{obj}:{c.key}"
        got = self.intern.get(key)
        if got is not None:
            if order < got[0]:
                self.intern[key] = (order, got[1])
            return got[1]
        i = len(self.prov)
        # lockdep's spelling, the module that tells two alike apart after it
        plain, tag = c.name, ""
        if plain.endswith(f" [{c.module}]"):
            plain, tag = plain[:-len(c.module) - 3], f" [{c.module}]"
        shown = (f"{PREFIX[obj]}({plain}){tag}" if obj in ("work", "timer", "completion")
                 else f"{PREFIX[obj]}{plain}{tag}")
        self.prov.append((lock_classes.LockClass(shown, key, c.origin, c.module, c.detail,
                                                 sig=f"{obj}:{c.sig or c.key}"), obj))
        self.intern[key] = (order, i)
        return i

    def _named(self, obj: str, label: str, order: Order) -> int:
        return self._class(lock_classes.LockClass(label, label, "static", "vmlinux",
                                                  sig=label), obj, order)

    # -- edges ----------------------------------------------------------------------

    def _order(self, r: int) -> Order:
        self.seq += 1
        return (r, self.seq, 0)

    def _add(self, into: dict[tuple[int, int, str, bool], _Acc], u: int, v: int, row: int,
             held_row: int, shared: bool, how: str, api: str, ctx: str,
             order: Order) -> None:
        # provisional ids: an object class is >= 0 here, a lock class is below base
        if u == v:
            return
        k = (u, v, how, shared)
        acc = into.get(k)
        if acc is None:
            into[k] = _Acc(order, row, held_row, ctx, api)
        else:
            acc.take(order, row, held_row, ctx, api)

    def _wait_side(self, r: int, at: int, obj_cls: int, held: list[tuple[int, int, bool]],
                   api: str, ctx: str) -> None:
        """Locks held at a wait -> the object (``at``: the processing row's order)."""
        for c, hr, sh in held:
            self._add(self.edges, _lock(c), obj_cls, r, hr, sh, "wait", api, ctx,
                      self._order(at))

    # long: one branch per object kind, as in the whole pass
    def feed(self, obj: ObjectRows, holds: Holds, gap_rows: np.ndarray) -> None:
        """The object rows of the next window, ``holds`` able to say what was held at
        them (and taken in a callback span that ends in them), and the window's gaps."""
        if len(gap_rows):
            self.gaps.append(np.asarray(gap_rows, dtype=np.int64))
        n = len(obj.rows)
        if not n:
            return
        rows, kind, ltype, name, func = obj.rows, obj.kind, obj.ltype, obj.name, obj.func
        addr, value, tasks, ctxs = obj.addr, obj.value, obj.tasks, obj.ctxs
        # classes of every object row, in row order, before anything else (module docstring)
        oc = np.full(n, -1, dtype=np.int64)
        for j in np.nonzero(obj.has_addr())[0].tolist():
            i = int(obj.cls[j])
            # no symbol, initializer or allocation: the address alone, which an
            # on-stack completion shares with every other object that lived there
            if i >= 0 and obj.table[i].origin != "instance":
                oc[j] = self._class(obj.table[i], str(ltype[j]), (-1, int(rows[j]), 0))
        for j in range(n):
            if kind[j] == "wait" and ltype[j] == "completion":
                self.own_waits.add((tasks[j], int(addr[j])))
        asks = holds.any_open(tasks, ctxs, rows)
        for j in range(n):
            r = int(rows[j])
            k, lt = kind[j], ltype[j]
            if k == "work_queued":
                self._queued(j, obj)
            if k == "wait":
                api = _API.get(func[j], func[j])
                if lt == "workqueue":
                    wq = name[j] or self.wq_names.get(int(addr[j]), "")
                    held = holds.held(tasks[j], ctxs[j], r) if asks[j] else []
                    if wq:
                        self._wait_side(r, r, self._named("workqueue", wq, self._order(r)),
                                        held, api, ctxs[j])
                    elif addr[j]:
                        # named by a queue_work() later, maybe: the whole pass knew it
                        self.unnamed_flushes.append(_Deferred(
                            self._order(r), r, tasks[j], int(addr[j]), held, api, ctxs[j]))
                elif lt == "kthread" and addr[j]:
                    self.stop_call[tasks[j]] = r  # the probe: the tracepoint follows
                elif lt == "kthread":
                    kc = self._named("kthread", name[j] or f"pid {int(value[j])}",
                                     self._order(r))
                    self.stopped.setdefault(int(value[j]), []).append((r, kc))
                    witness = self.stop_call.pop(tasks[j], -1)
                    if asks[j]:
                        self._wait_side(witness if witness >= 0 else r, r, kc,
                                        holds.held(tasks[j], ctxs[j], r), api, ctxs[j])
                elif oc[j] >= 0 and asks[j]:
                    self._wait_side(r, r, int(oc[j]), holds.held(tasks[j], ctxs[j], r),
                                    api, ctxs[j])
            elif k == "signal":
                if not asks[j] or (lt != "kthread" and oc[j] < 0):
                    continue
                d = _Deferred(self._order(r), r, tasks[j], int(addr[j]),
                              holds.held(tasks[j], ctxs[j], r), str(func[j]), ctxs[j])
                if lt == "kthread":
                    self.should_stop.append(d)
                else:
                    self._signal_side(d, int(oc[j]))
            elif k == "work_queued":
                if name[j]:
                    self.wq_of_work[int(addr[j])] = name[j]
            elif k == "callback_entry":
                wq = self.wq_of_work.get(int(addr[j]), "") if lt == "work" else ""
                self.open_spans.setdefault((tasks[j], ctxs[j], int(addr[j])), []).append(
                    (r, int(oc[j]), wq))
            elif k == "callback_exit":
                st = self.open_spans.get((tasks[j], ctxs[j], int(addr[j])))
                if not st:
                    continue
                lo, span_cls, wq = st.pop()
                if not st:
                    del self.open_spans[(tasks[j], ctxs[j], int(addr[j]))]
                self._span(lo, r, span_cls, wq, holds, tasks[j], ctxs[j])

    def open_span_starts(self) -> dict[tuple[int, str], int]:
        """Per (task, context), where its earliest callback span still open began: what
        it takes from there on is asked for when the span ends (hold_stream)."""
        out: dict[tuple[int, str], int] = {}
        for (task, ctx, _), spans in self.open_spans.items():
            lo = min(r for r, _, _ in spans)
            out[(task, ctx)] = min(lo, out.get((task, ctx), lo))
        return out

    def _queued(self, j: int, obj: ObjectRows) -> None:
        """``_workqueue_names``: the ``__queue_work`` probe names the workqueue by
        pointer, the queue_work tracepoint inside it by name, for the same work item."""
        key = (obj.tasks[j], int(obj.addr[j]))
        if obj.ptr[j]:
            self.wq_pending[key] = int(obj.ptr[j])
        elif obj.name[j]:
            wq = self.wq_pending.pop(key, 0)
            if wq:
                self.wq_names.setdefault(wq, str(obj.name[j]))

    def _span(self, lo: int, hi: int, span_cls: int, wq: str, holds: Holds, task: int,
              ctx: str) -> None:
        """A callback's span: its object (and workqueue) -> each lock it took.  A span
        with a gap in it adds nothing: damage can lose an edge, never make one up."""
        if any(len(g) and np.any((g > lo) & (g < hi)) for g in self.gaps):
            return
        order = self._order(hi)
        runs = [span_cls] if span_cls >= 0 else []
        if wq:
            runs.append(self._named("workqueue", wq, order))
        for c, hr in holds.taken(task, ctx, lo, hi):
            for obj_cls in runs:
                self._add(self.edges, obj_cls, _lock(c), hr, lo, False, "runs", "", ctx,
                          self._order(hi))

    def _signal_side(self, d: _Deferred, obj_cls: int) -> None:
        """The object -> locks held where it was signalled (kept apart: see the module
        docstring)."""
        into = self.signals.setdefault((d.task, d.addr), {})
        for i, (c, hr, _) in enumerate(d.held):
            self._add(into, obj_cls, _lock(c), d.row, hr, False, "signal", d.api, d.ctx,
                      (d.order[0], d.order[1], i))

    def finish(self) -> WaitGraph:
        """The graph, as ``waits.wait_graph`` over the whole frame gives it."""
        for d in self.unnamed_flushes:
            wq = self.wq_names.get(d.addr, "")
            if wq:
                self._wait_side(d.row, d.order[0], self._named("workqueue", wq, d.order),
                                d.held, d.api, d.ctx)
        # a kthread's looks for its stop, once it is known which thread was stopped
        for i, d in enumerate(self.should_stop):
            later = [kc for sr, kc in self.stopped.get(d.task, []) if sr > d.row]
            if later:
                self._signal_side(_Deferred((_END, i, 0), d.row, d.task, d.addr, d.held,
                                            d.api, d.ctx), later[0])
        merged = dict(self.edges)
        for owner, accs in self.signals.items():
            # a task that signals a completion it waits for itself (rcu_barrier(), a
            # kobject's release in the put before the wait) needs nothing from another
            # context: its locks are no dependency of the completion
            if owner in self.own_waits:
                continue
            for k, acc in accs.items():
                got = merged.get(k)
                if got is None:
                    merged[k] = _Acc(acc.order, acc.row, acc.held_row, acc.ctx, acc.api,
                                     acc.count)
                else:
                    got.take(acc.order, acc.row, acc.held_row, acc.ctx, acc.api, acc.count)
        # the classes numbered in the order the whole pass met them
        g = WaitGraph(base=self.base)
        ids = np.full(len(self.prov), -1, dtype=np.int64)
        for _, (_, p) in sorted(self.intern.items(), key=lambda kv: kv[1][0]):
            ids[p] = self.base + len(g.classes)
            lc, obj = self.prov[p]
            g.classes.append(lc)
            g.kinds[int(ids[p])] = obj

        def final(c: int) -> int:
            return int(ids[c]) if c >= 0 else -2 - c  # a lock class (_lock)

        for (u, v, how, shared), acc in sorted(merged.items(), key=lambda kv: kv[1].order):
            g.edges.setdefault((final(u), final(v)), []).append(WaitEdge(
                acc.count, acc.row, acc.held_row, shared, False, acc.ctx, how=how,
                api=acc.api))
        return g


def _lock(c: int) -> int:
    """A lock class among the provisional object ids (which are >= 0): below -1."""
    return -2 - c
