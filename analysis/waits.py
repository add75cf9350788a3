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

from collections.abc import Callable
from typing import Self

import numpy as np
import pandas as pd

from tracedep.analysis import classes as lock_classes
from tracedep.analysis.acquisitions import text_codes
from tracedep.analysis.findings import Site, WitnessKind
from tracedep.analysis.heldlocks import SHARED_TYPES, Replay, task_contexts
from tracedep.analysis.rules import Ctx
from tracedep.analysis.run_symbols import RunSymbols
from tracedep.analysis.wait_stream import PREFIX, ObjectRows, WaitBuilder, WaitEdge, WaitGraph

__all__ = ["OBJECT_KINDS", "PREFIX", "WaitEdge", "WaitGraph", "object_rows", "wait_graph",
           "wait_sites"]

OBJECT_KINDS = ("wait", "signal", "work_queued", "callback_entry", "callback_exit")
_FAR = np.iinfo(np.int64).max


_WINDOW = 1 << 14  # rows: a hold longer than this is looked at by every question


def hold_ends(rep: Replay, ts: np.ndarray) -> np.ndarray:
    """The row at which each of the replay's acquisitions stopped being held (``_FAR``:
    never), from its whole table; ``ts``: the trace's time stamps."""
    ended = {fo.acq: fo.row for fo in rep.forced}
    ended.update(rep.irq_ended)  # an interrupt's lock whose unlock was missed
    return ends_of(rep.acquisitions, ts, ended)


def ends_of(a: pd.DataFrame, ts: np.ndarray, ended: dict[int, int], row0: int = 0
            ) -> np.ndarray:
    """The row at which each of acquisitions ``a`` stopped being held (``_FAR``: not
    seen to stop): its release row, else the first row at its release time (``ts``,
    rows from ``row0`` on), else where ``ended`` (acquisition -> row: forced releases,
    IRQ holds ended) says.  ``a``'s column ``acq`` names the acquisitions, else its
    positions do (the whole table)."""
    end = a["release_row"].to_numpy(dtype=np.int64).copy()
    # released where no row says (handed to a task whose events are filtered, as the
    # runqueue lock to a trace pump): the time says
    t_rel = a["ts_release"].to_numpy(dtype=np.int64)
    timed = (end < 0) & (t_rel >= 0)
    end[timed] = np.searchsorted(ts, t_rel[timed], side="left") + row0
    if ended:
        acq = (a["acq"].to_numpy(dtype=np.int64) if "acq" in a.columns
               else np.arange(len(a), dtype=np.int64))
        at = np.nonzero(np.isin(acq, list(ended)))[0]
        end[at] = [ended[int(x)] for x in acq[at]]
    end[end < 0] = _FAR
    return end


class _Holds:
    """Which locks a (task, context) held at an event row, from the replay."""

    def __init__(self, rep: Replay, tasks: set[int], ts: np.ndarray) -> None:
        self.by: dict[tuple[int, str], tuple[np.ndarray, ...]] = {}
        # per (task, context): start order, starts in that order, the long holds
        self.index: dict[tuple[int, str], tuple[np.ndarray, ...]] = {}
        # (and the ends, sorted: how many are open at a row, in two binary searches)
        a = rep.acquisitions
        if a.empty or not tasks:
            return
        self._index(a, hold_ends(rep, ts), tasks)

    @classmethod
    def of(cls, a: pd.DataFrame, end: np.ndarray, tasks: set[int]) -> Self:
        """From acquisitions ``a`` (in the replay's order) that end at ``end`` (the row,
        or beyond every row asked about)."""
        out = cls.__new__(cls)
        out.by, out.index = {}, {}
        if len(a) and tasks:
            out._index(a, end, tasks)
        return out

    def _index(self, a: pd.DataFrame, end: np.ndarray, tasks: set[int]) -> None:
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

        def open_at(c: np.ndarray) -> np.ndarray:
            return c[(start[c] < r) & (end[c] > r) & (cls[c] >= 0)]

        # the few open ones of each, then their union (sorting both whole cost more)
        m = np.union1d(open_at(near), open_at(long_held))
        return [(int(cls[j]), int(start[j]), bool(shared[j])) for j in m]

    def any_open(self, tasks: list[int], ctxs: list[str], rows: np.ndarray) -> np.ndarray:
        """Per question (task, context, row): may a lock be held there?  The first test
        of :meth:`held`, for all questions at once (a busy kthread asks a million
        times between its rounds, with nothing held); False needs no :meth:`held`."""
        out = np.zeros(len(rows), dtype=bool)
        if not len(rows) or not self.index:
            return out
        # one integer per (task, context): the contexts are at most four names
        ctx_codes, _ = pd.factorize(np.asarray(ctxs, dtype=object))
        keys = np.asarray(tasks, dtype=np.int64) * 8 + ctx_codes
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


def wait_graph(ev: pd.DataFrame, symbols: RunSymbols, rep: Replay, base: int,
               namer: lock_classes.ClassNamer | None = None) -> WaitGraph:
    """The wait edges of a replayed trace; their object classes are numbered from
    ``base`` (the lock class table's length).  The whole frame as one window of
    analysis.wait_stream."""
    b = WaitBuilder(base)
    kinds = ev["kind"]
    rows = np.nonzero(kinds.isin(OBJECT_KINDS).to_numpy())[0]
    if not len(rows):
        return b.finish()

    def classes(at: np.ndarray) -> tuple[np.ndarray, list[lock_classes.LockClass]]:
        return lock_classes.assign(ev, symbols, at, namer)

    obj = object_rows(ev, rows, 0, classes)
    holds = _Holds(rep, set(obj.tasks), ev["ts_ns"].to_numpy())
    b.feed(obj, holds, np.nonzero((kinds == "gap").to_numpy())[0])
    return b.finish()


def object_rows(ev: pd.DataFrame, rows: np.ndarray, row0: int,
                classes: Callable[[np.ndarray], tuple[np.ndarray,
                                                     list[lock_classes.LockClass]]]
                ) -> ObjectRows:
    """The object rows ``rows`` of the window ``ev`` (whose first row is ``row0`` of
    the trace); ``classes``: the class of each of the given rows of ``ev`` (ids into a
    table, as ``classes.assign``), asked for the rows with an object address."""
    # the few rows asked about, taken before any text is made: the columns are
    # categoricals of the whole trace (tens of millions of rows)

    def text(col: str) -> np.ndarray:
        return ev[col].iloc[rows].astype(str).to_numpy()

    tasks, ctxs = task_contexts(ev, rows)
    obj = ObjectRows(rows + row0, text("kind"), text("lock_type"), text("lock_name"),
                     text("func"), ev["lock_addr"].to_numpy()[rows],
                     ev["value"].to_numpy()[rows], ev["ptr"].to_numpy()[rows], tasks, ctxs,
                     np.full(len(rows), -1, dtype=np.int64), [])
    has_addr = obj.has_addr()
    if has_addr.any():
        ids, obj.table = classes(rows[has_addr])
        obj.cls[has_addr] = ids
    return obj


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
