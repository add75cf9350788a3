"""lockdep's own lock tracepoints, on kernels built with them (vm/lockdep.config).

``lock:lock_acquire``/``lock:lock_release`` fire inside the lock functions our
kprobes fire at the entry of, on the same CPU and task, with the address of the
lock's ``lockdep_map`` (inside the lock: just past the lock word and its debug
fields).  They are used for one thing: the lockdep class name of the lock our
probe saw, put in the probe row's ``lock_name``.  The lock events the analysis
replays stay our probes' rows, the same on every kernel, and the lockdep rows
become kind ``other``:

* lockdep hands the run-queue lock from one task to the next with its own
  release/acquire pair around a context switch, which the replay models from
  ``sched_switch`` already; replaying both counts the lock twice;
* lockdep also "acquires" maps that are not locks (``rcu_read_lock``,
  ``(wq_completion)events``, ``(&timer.timer)``, ``fs_reclaim``), with read and
  recursion semantics its tracepoint does not record (no subclass, ``read`` only
  as one bit).  Taken as locks they make every task a lock-order and IRQ-safety
  suspect; tracedep's sleep rules check ``flush_work()`` and
  friends in atomic context directly instead.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

LOCKDEP_EVENTS = ("lock/lock_acquire", "lock/lock_release")
# the lockdep_map sits inside the lock: after the lock word and, with
# DEBUG_SPINLOCK/DEBUG_MUTEXES/DEBUG_RWSEMS, their owner and magic fields
MAP_OFFSET_MAX = 256
PENDING_MAX = 8  # probe rows awaiting their lockdep event per CPU (interrupts nest)


def merge_lockdep(ev: pd.DataFrame) -> dict[str, int]:
    """Name our probes' lock rows from lockdep's events, in place; retire the latter.

    A lockdep event names the most recent pending probe row of the same CPU, kind and
    task whose lock contains the lockdep_map (any, when the address is unknown, as in
    ftrace text).  Returns counts: lockdep rows, probe rows named, lockdep rows with
    no probe row (lockdep's pseudo-locks, and locks whose probe kprobes missed).
    """
    kinds = ev["kind"].astype(str).to_numpy()
    names = ev["event"].astype(str).to_numpy()
    lockish = np.nonzero(np.isin(kinds, ("lock_acquire", "lock_release")))[0]
    is_ld = np.isin(names[lockish], LOCKDEP_EVENTS)
    n_ld = int(is_ld.sum())
    if n_ld == 0:
        return {"lockdep_rows": 0, "named": 0, "unmatched": 0}
    cpu = ev["cpu"].to_numpy()
    pid = ev["pid"].to_numpy()
    addr = ev["lock_addr"].to_numpy()
    func = ev["func"].astype(str).to_numpy()
    lock_name = ev["lock_name"].astype(str).to_numpy().copy() if "lock_name" in ev.columns \
        else np.full(len(ev), "", dtype=object)
    pending: dict[tuple[int, str], list[int]] = {}
    named = 0
    for r, ld in zip(lockish.tolist(), is_ld.tolist(), strict=True):
        key = (int(cpu[r]), kinds[r])
        waiting = pending.setdefault(key, [])
        if not ld:
            waiting.append(r)
            if len(waiting) > PENDING_MAX:
                del waiting[0]  # its lockdep event never came (a failed trylock)
            continue
        a = int(addr[r])
        for j in range(len(waiting) - 1, -1, -1):
            p = waiting[j]
            if pid[p] == pid[r] and (a == 0 or 0 <= a - int(addr[p]) < MAP_OFFSET_MAX):
                lock_name[p] = func[r]
                named += 1
                del waiting[j]
                break
    new_kinds = kinds.copy()
    new_kinds[lockish[is_ld]] = "other"
    cats = list(ev["kind"].cat.categories)
    ev["kind"] = pd.Categorical(new_kinds, categories=cats + ["other"] * ("other" not in cats))
    ev["lock_name"] = pd.Categorical(lock_name)
    return {"lockdep_rows": n_ld, "named": named, "unmatched": n_ld - named}
