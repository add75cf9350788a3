"""The event schema: the contract between ``tracer`` (and any trace parser) and ``analysis``.

Every event source (the binary ftrace decoder, the ftrace text parser, a kernel
with lock tracepoints) produces one :class:`pandas.DataFrame` with exactly the
columns of :data:`COLUMNS`, in that order, with those dtypes.  The frame is
sorted by ``ts_ns`` (ties keep ring-buffer order within a CPU).

Versioning (semver on the schema only): a new optional column is a minor bump;
renaming, removing or changing the meaning of a column is a major bump and needs
an upgrade function registered in :data:`UPGRADES` with its test.

Columns
-------
``ts_ns``           int64   guest timestamp (ns, trace clock ``global``)
``cpu``             int16   CPU the event was recorded on
``pid``             int32   current task (0 = idle/swapper)
``comm``            category task name (``<...>`` when the source did not know it)
``irqs_off``        bool    hardirqs disabled (already calibrated per arch/probe kind)
``preempt_depth``   int8    preemption-disable depth of the *traced code* (0–15)
``bh_off``          bool    softirqs disabled by ``local_bh_disable`` (not serving one)
``in_hardirq``      bool    running a hardirq handler
``in_softirq``      bool    running a softirq handler
``in_nmi``          bool    running an NMI handler
``kind``            category one of :data:`KINDS`
``event``           category the raw event name (``tracedep/lk_spin``, ``kmem/kmalloc`` …)
``lock_addr``       uint64  lock instance address (0 when not a lock event)
``lock_type``       category one of :data:`LOCK_TYPES` or ``""``
``lock_flags``      category ``+``-joined subset of :data:`LOCK_FLAGS` (``"trylock+irqsave"``),
                            or ``""``
``ip``              uint64  call site: return address − call-instruction size (0 when unknown)
``gfp``             uint32  GFP flags of an allocation (0 otherwise)
``ptr``             uint64  allocated/freed object address (0 otherwise)
``bytes``           int64   bytes allocated (``bytes_alloc``), 0 otherwise
``func``            category for ``sleep_call``: the function that may sleep; for irq events
                            the handler or vector name; module name for ``module_load``
``value``           int64   event-specific integer: return value (``lock_return``), prev_state
                            (``sched_switch``), irq or softirq vector number, subclass
``stack_id``        int32   index into the run's stack table, -1 when no stack was taken
``target_pid``      int32   ``sched_switch``: the task switched to (-1 otherwise)  [1.1]
``lock_name``       category lockdep's class name of the lock (``&dev->lock``), on kernels
                            with lockdep's lock tracepoints; ``""`` otherwise  [1.2].
                            ``lock_init`` rows: the name the initializer was given
                            (``&q->sysfs_lock``), or for a re-keying (``tracedep/lc_*``)
                            the name of what keys it (the file system type: ``debugfs``);
                            printable ASCII, at most 96 characters (tracer.lock_init)  [1.3]
``key_addr``        uint64  ``lock_init`` rows: the ``struct lock_class_key`` the initializer
                            was given, or for a re-keying the object that keys the lock
                            (``struct file_system_type``); 0 otherwise  [1.3]

A ``lock_init`` row [1.3] is a lock's initialization (``__mutex_init``…) or re-keying:
``lock_addr`` the lock, ``ip`` the init call site, ``func`` the probed function.

Wait rows [1.5] (tracer.wait_probes): ``wait`` (a wait on another context:
``func`` the API, ``lock_type`` the object kind, one of ``work``, ``workqueue``,
``timer``, ``completion``, ``kthread``; ``lock_addr`` the object, a workqueue's name
in ``lock_name`` where known, a stopped kthread's pid in ``value`` and comm in
``lock_name``), ``signal`` (``complete()``: ``lock_addr`` the completion; a kthread
looking for its stop: ``lock_addr`` 0), ``work_queued`` (``lock_addr`` the work; from
the tracepoint ``lock_name`` its workqueue's name and ``ip`` its function, from the
``__queue_work`` probe ``ptr`` the workqueue and ``ip`` the call site), ``callback_entry`` and
``callback_exit`` (a work item's or timer's function runs: ``lock_addr`` the
object, ``lock_type`` ``work`` or ``timer``, ``ip`` the function).

A ``gap`` row [1.4] (event ``tracedep/gap``) marks where events of ``cpu`` are
missing: a ring-buffer page that was torn, out of time order, changed since it
was recorded, or preceded by events the ring buffer lost, a record rejected
against its format, or a change of the CPU's task with no ``sched_switch`` traced
(tracer.unseen_switches).  Only ``ts_ns`` and ``cpu`` mean anything in it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

SCHEMA_VERSION = "1.5"  # 1.1: target_pid; 1.2: lock_name; 1.3: lock_init kind, key_addr;
# 1.4: gap kind; 1.5: wait kinds

KINDS = (
    "lock_acquire",  # entry of a lock function (the lock is held once it returns)
    "lock_return",  # return of a lock function whose outcome matters (trylock, *_interruptible)
    "lock_release",
    "alloc",
    "free",
    "sleep_call",  # entry of a function that may sleep (catalog, might_sleep via __cond_resched)
    "sched_switch",
    "irq_entry",
    "irq_exit",
    "softirq_entry",
    "softirq_exit",
    "module_load",
    "lock_init",  # a lock initializer or re-keying (tracer.lock_init)  [1.3]
    "marker",  # trace_marker writes from the guest's init (workload phases)
    "gap",  # events are missing here (a page or record that could not be read)  [1.4]
    "wait",  # a wait on another context's work: lock_addr the object  [1.5]
    "signal",  # a completion completed, a kthread looking for its stop  [1.5]
    "work_queued",  # a work item queued: lock_addr the work, lock_name the workqueue  [1.5]
    "callback_entry",  # a work item's or timer's function starts: lock_addr the object  [1.5]
    "callback_exit",  # … and returns  [1.5]
    "other",
)

LOCK_TYPES = (
    "spinlock",
    "rwlock-r",
    "rwlock-w",
    "mutex",
    "rwsem-r",
    "rwsem-w",
    "semaphore",
)

LOCK_FLAGS = ("trylock", "irqsave", "irq", "bh", "nested", "interruptible", "killable")

COLUMNS: dict[str, str] = {
    "ts_ns": "int64",
    "cpu": "int16",
    "pid": "int32",
    "comm": "category",
    "irqs_off": "bool",
    "preempt_depth": "int8",
    "bh_off": "bool",
    "in_hardirq": "bool",
    "in_softirq": "bool",
    "in_nmi": "bool",
    "kind": "category",
    "event": "category",
    "lock_addr": "uint64",
    "lock_type": "category",
    "lock_flags": "category",
    "ip": "uint64",
    "gfp": "uint32",
    "ptr": "uint64",
    "bytes": "int64",
    "func": "category",
    "value": "int64",
    "stack_id": "int32",
    "target_pid": "int32",
    "lock_name": "category",
    "key_addr": "uint64",
}

# ftrace record header flag bits (kernel/trace/trace.h, enum trace_flag_type)
TRACE_FLAG_IRQS_OFF = 0x01
TRACE_FLAG_IRQS_NOSUPPORT = 0x02
TRACE_FLAG_NEED_RESCHED = 0x04
TRACE_FLAG_HARDIRQ = 0x08
TRACE_FLAG_SOFTIRQ = 0x10
TRACE_FLAG_PREEMPT_RESCHED = 0x20
TRACE_FLAG_NMI = 0x40
TRACE_FLAG_BH_OFF = 0x80

Upgrade = Callable[[pd.DataFrame], pd.DataFrame]
UPGRADES: dict[str, tuple[str, Upgrade]] = {}
"""``{from_major: (to_version, function)}``; empty while the schema is at 1.x."""


def empty() -> pd.DataFrame:
    """An empty events frame with the schema's columns and dtypes."""
    return conform(pd.DataFrame({c: pd.Series(dtype="object") for c in COLUMNS}))


def conform(df: pd.DataFrame) -> pd.DataFrame:
    """Fix column order and dtypes in one place; missing optional values get defaults."""
    out = {}
    n = len(df)
    for col, dtype in COLUMNS.items():
        if col in df.columns:
            s = df[col]
        elif dtype == "category":
            s = pd.Series([""] * n, index=df.index)
        elif dtype == "bool":
            s = pd.Series(np.zeros(n, dtype=bool), index=df.index)
        elif col in ("stack_id", "target_pid"):
            s = pd.Series(np.full(n, -1, dtype=np.int32), index=df.index)
        else:
            s = pd.Series(np.zeros(n, dtype=dtype), index=df.index)
        if dtype == "category":
            if isinstance(s.dtype, pd.CategoricalDtype) and s.cat.categories.dtype == object:
                out[col] = s
            else:
                out[col] = s.astype("string").fillna("").astype(object).astype("category")
        else:
            out[col] = s.astype(np.dtype(dtype))
    return pd.DataFrame(out).reset_index(drop=True)


def validate(df: pd.DataFrame) -> None:
    """Raise ``ValueError`` if ``df`` breaks the contract (columns, dtypes, kinds)."""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"events frame lacks columns {missing}")
    for col, dtype in COLUMNS.items():
        if str(df[col].dtype) != dtype:
            raise ValueError(f"column {col} has dtype {df[col].dtype}, expected {dtype}")
    kind = df["kind"].array
    if isinstance(kind, pd.Categorical):  # the kinds used, not a string per row
        codes = np.unique(kind.codes)
        used = [str(c) for c in kind.categories[codes[codes >= 0]]]
        bad = set(used + (["nan"] if len(codes) and codes[0] < 0 else [])) - set(KINDS)
    else:
        bad = set(df["kind"].astype(str).unique()) - set(KINDS)
    if bad:
        raise ValueError(f"unknown event kinds {sorted(bad)}")
