"""What a window's wait questions are answered from, as the replay goes (analysis.waits).

The whole frame's wait graph asks ``waits._Holds`` which locks a task held at a row,
from every acquisition of the trace and the row each ended at.  A window's questions
need fewer: the acquisitions that started before its end and had not ended before
its start.  After the replay has read a window, those are the ones it settled in the
window and the ones still open (``end`` beyond the window: open at every row of it,
which is all a question asks).  :meth:`HoldStream.window` gives a ``_Holds`` over
them, whose answers are the whole frame's for the window's rows.

A callback span (``callback_entry`` … ``callback_exit``) asks at its end for every
acquisition its task took since its start, which may be windows back and ended long
ago: while a span of a (task, context) is open, what that task takes is kept here
(``spans``), and forgotten when no span of it is open.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from tracedep.analysis.acquisitions import text_codes
from tracedep.analysis.waits import _FAR, _Holds

Key = tuple[int, str]  # (task, context), as heldlocks.task_contexts


@dataclass
class _Taken:
    """A (task, context)'s acquisitions kept for its open spans, by replay order."""

    acq: np.ndarray
    row: np.ndarray
    cls: np.ndarray
    trylock: np.ndarray


class WindowHolds(_Holds):
    """``_Holds`` over a window's acquisitions, with the spans' kept ones for
    :meth:`taken`."""

    kept: dict[Key, _Taken]
    current: dict[Key, _Taken]

    def taken(self, task: int, ctx: str, lo: int, hi: int) -> list[tuple[int, int]]:
        """(class, acquiring row) of each blocking acquisition between two rows (in
        replay order, as the whole frame's)."""
        parts = [t for t in (self.kept.get((task, ctx)), self.current.get((task, ctx)))
                 if t is not None]
        if not parts:
            return []
        acq = np.concatenate([t.acq for t in parts])
        acq, first = np.unique(acq, return_index=True)  # sorted: the replay's order
        row, cls, tryl = (np.concatenate([getattr(t, c) for t in parts])[first]
                          for c in ("row", "cls", "trylock"))
        m = (row > lo) & (row < hi) & ~tryl & (cls >= 0)
        return [(int(c), int(r)) for c, r in zip(cls[m], row[m], strict=True)]


@dataclass
class HoldStream:
    spans: dict[Key, _Taken] = field(default_factory=dict)

    def window(self, cand: pd.DataFrame, end: np.ndarray, tasks: set[int]) -> WindowHolds:
        """The holds of a window: ``cand`` the acquisitions it may see (column ``acq``:
        their replay index, ascending), ``end`` where each ended (``_FAR``: not in the
        window); ``tasks``: whose questions it has."""
        end = np.where(end < 0, _FAR, end)
        h = WindowHolds.of(cand, end, tasks)
        h.kept = self.spans
        h.current = _by_key(cand)
        return h

    def keep(self, cand: pd.DataFrame, open_spans: dict[Key, int]) -> None:
        """After a window: keep, for each (task, context) with a span still open (from
        the row given), its acquisitions since then; forget the others."""
        now = _by_key(cand)
        kept: dict[Key, _Taken] = {}
        for k, start in open_spans.items():
            parts = [t for t in (self.spans.get(k), now.get(k)) if t is not None]
            if not parts:
                continue
            acq = np.concatenate([t.acq for t in parts])
            acq, first = np.unique(acq, return_index=True)
            cols = [np.concatenate([getattr(t, c) for t in parts])[first]
                    for c in ("row", "cls", "trylock")]
            m = cols[0] > start
            if m.any():
                kept[k] = _Taken(acq[m], cols[0][m], cols[1][m], cols[2][m])
        self.spans = kept


def _by_key(a: pd.DataFrame) -> dict[Key, _Taken]:
    """Acquisitions by (task, context), each group in replay order."""
    if a.empty:
        return {}
    ctx_names, ctx = text_codes(a["ctx"])
    task = a["task"].to_numpy(dtype=np.int64)
    order = np.lexsort((a["acq"].to_numpy(dtype=np.int64), ctx, task))
    acq, row, cls, tryl = (a[c].to_numpy()[order] for c in ("acq", "row", "cls", "trylock"))
    task, ctx = task[order], ctx[order]
    edge = np.flatnonzero((np.diff(task) != 0) | (np.diff(ctx) != 0)) + 1
    out: dict[Key, _Taken] = {}
    for lo, hi in zip([0, *edge.tolist()], [*edge.tolist(), len(order)], strict=True):
        out[(int(task[lo]), str(ctx_names[ctx[lo]]))] = _Taken(
            acq[lo:hi].astype(np.int64), row[lo:hi].astype(np.int64),
            cls[lo:hi].astype(np.int64), tryl[lo:hi].astype(bool))
    return out


@dataclass
class OpenSites:
    """The call site and time of each acquire row of a lock still held, by row: a
    question about such a lock (its holder's stack, an allocation under it) may come
    windows after the row it was taken at."""

    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    ips: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    ts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def add(self, ev: pd.DataFrame, row0: int) -> None:
        """A window's acquire rows (``ev``; ``row0``: its first row in the trace)."""
        at = np.nonzero((ev["kind"] == "lock_acquire").to_numpy())[0]
        self.rows = np.concatenate([self.rows, at.astype(np.int64) + row0])
        self.ips = np.concatenate([self.ips, ev["ip"].to_numpy()[at].astype(np.uint64)])
        self.ts = np.concatenate([self.ts, ev["ts_ns"].to_numpy()[at].astype(np.int64)])

    def keep(self, rows: np.ndarray) -> None:
        """Forget all but ``rows`` (those still open)."""
        k = np.isin(self.rows, rows)
        self.rows, self.ips, self.ts = self.rows[k], self.ips[k], self.ts[k]

    def at(self, row: int) -> tuple[int, int] | None:
        """(ip, ts) of the acquire row ``row``; None when it is not kept."""
        i = int(np.searchsorted(self.rows, row))
        if i < len(self.rows) and int(self.rows[i]) == row:
            return int(self.ips[i]), int(self.ts[i])
        return None
