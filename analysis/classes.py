"""Lock classes, as lockdep means them, for every lock event of a trace.

* static lock: the symbol it lives in (``rtnl_mutex``; ``td_dev+0x10`` inside a struct);
* initialized lock: the lock's latest initializer call before the event
  (``__mutex_init(lock, name, key)`` & co., tracer.lock_init), when the object
  holding the lock was not freed in between: lockdep's own class, keyed by the
  module, the function that called the initializer and the name it passed
  (``&q->sysfs_lock``), and named by that name.  An inode's ``i_rwsem`` is keyed by
  its file system type, as ``inode_init_always()``'s ``lockdep_set_class()`` does
  (``&sb->s_type->i_mutex_key [debugfs]``).  An array of locks initialized at one
  call site is one class, as in lockdep.  An init class lasts until the next
  init at the address or the free of the object around it; memory with no
  allocation or free events (a stack frame) keeps it until the next init there,
  so an on-stack lock that only an inline spin_lock_init() set up, at an address
  where an on-stack completion or wait queue lived, takes that class;
* heap lock: the allocation call site of the object that held it at that moment
  (from the ``kmem`` events: the source line in a module with DWARF, else the
  call's offset in its function) plus the lock's offset in the object, so two
  instances in two objects from one site are one class, and two allocations in one
  function are two;
* otherwise (allocated before tracing, per-CPU data, page allocations): the
  instance itself, named after the function that first took it.  Findings on
  such classes say so.

The classes come from analysis.class_stream, which reads the trace a window at a
time in bounded memory; :func:`assign` feeds it one frame.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tracedep.analysis.class_model import (
    GENERIC_ALLOCATORS,
    SPINNING_LOCK_TYPES,
    ClassNamer,
    LockClass,
)
from tracedep.analysis.class_stream import ClassEngine
from tracedep.analysis.run_symbols import RunSymbols

__all__ = ["GENERIC_ALLOCATORS", "SPINNING_LOCK_TYPES", "ClassNamer", "LockClass", "assign"]

WINDOW_ROWS = 1 << 20  # rows fed to the engine at a time


def assign(events: pd.DataFrame, symbols: RunSymbols, lock_rows: np.ndarray,
           namer: ClassNamer | None = None) -> tuple[np.ndarray, list[LockClass]]:
    """Class id for each row in ``lock_rows`` (indices into ``events``), and the class table.

    ``namer`` names heap classes from their type (analysis.type_names); without it,
    or where it knows nothing, they are named by allocating function and offset.
    ``events`` is in time order (tracer.schema) and ``lock_rows`` ascending."""
    lock_rows = np.asarray(lock_rows, dtype=np.int64)
    if len(lock_rows) > 1 and not (lock_rows[1:] > lock_rows[:-1]).all():
        raise ValueError("lock_rows must be ascending")
    ts = events["ts_ns"].to_numpy()
    if len(ts) > 1 and not (ts[1:] >= ts[:-1]).all():
        raise ValueError("events must be in time order")
    eng = ClassEngine(symbols, namer)
    prov = np.full(len(events), -1, dtype=np.int64)
    sel = np.zeros(len(events), dtype=bool)
    sel[lock_rows] = True
    for lo, hi in _windows(ts, WINDOW_ROWS):
        part = events.iloc[lo:hi]
        prov[lo:hi] = eng.feed(part, lo, np.nonzero(sel[lo:hi])[0])
    plan = eng.finish()
    ids = plan.resolve(prov[lock_rows], events["lock_addr"].to_numpy()[lock_rows])
    return ids, plan.table


def _windows(ts: np.ndarray, rows: int) -> list[tuple[int, int]]:
    """Row ranges of about ``rows`` rows that split no time stamp."""
    out = []
    lo = 0
    while lo < len(ts):
        hi = min(lo + rows, len(ts))
        if hi < len(ts):
            hi = int(np.searchsorted(ts, ts[hi], side="left"))
            if hi <= lo:
                hi = int(np.searchsorted(ts, ts[lo], side="right"))
        out.append((lo, hi))
        lo = hi
    return out
