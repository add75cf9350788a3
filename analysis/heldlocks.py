"""Held-lock state: replay the lock events in time order, as lockdep would see them.

Held locks are kept per task and per IRQ context (lockdep's ``irq_context``): a
hardirq or softirq runs on top of whatever task it interrupted, with its own
lock chain, and dependencies are only recorded within one context.  Each CPU's
idle task is its own "task".

The replay is the one place where order matters, so it is a loop, one pass per
event; everything around it is column work.  The loop runs in C where a compiler is
at hand (analysis/native/replay.c, fed by analysis.replay_native); the loop below,
over plain Python lists, is its fallback and its reference: the two give the same
:class:`Replay`, field for field (tests/analysis/test_replay_native.py).  It produces:

* ``acquisitions``: one row per successful acquisition (with its release);
* ``edges``: class-level dependencies ``held → acquired`` with a witness each;
* ``usage``: lockdep's usage bits per class (used in hardirq/softirq, taken with
  hardirqs/softirqs enabled), each with its first witness;
* ``recursions``: a lock (instance or class) taken again by its holder;
* ``sleeps``: every may-sleep event with the atomic state it happened in;
* ``forced``: held locks ended without their release being seen, and why.

A lock whose release is never seen (a probe the kernel refused or kprobes missed,
lost events, an inlined unlock that could not be probed) must not stay "held" for
the rest of its task's life, making every later sleep and acquisition a finding.
It ends where the evidence ends (``acquisitions.FORCED_REASONS``):

* ``preempted``: the task was preempted (``sched_switch`` prev_state has
  TASK_REPORT_MAX): on a non-RT kernel a spinning lock disables preemption, and
  the preemption points of a non-preemptible kernel (``cond_resched()``, the
  return to user space or from an interrupt to it) cannot run with one held
  (a ``cond_resched()`` under a spinlock is reported at its own might-sleep event);
* ``preempt-count``: on kernels whose preempt_count counts held spinlocks (the
  calibration says so), a process-context event shows fewer levels than spinning
  locks the replay holds: the excess was released (the ones whose release probe
  is known to be missing first, then the innermost);
* ``user-space``: the task wrote a trace marker (a syscall of its own) or exited
  (prev_state Z/X): no kernel lock survives a return to user space or exit
  (lockdep's "lock held when returning to user space" / at exit);
* ``release-unseen``: a spinning lock whose release may be invisible (``suspect``:
  analysis.missing) is taken again by its holder (which would have hung), or meets
  a may-sleep event on a kernel where preempt_count cannot tell: it is kept only
  if the function that took it is still on that event's stack, else it ended
  when that function returned;
* ``re-acquired``: any spinning lock taken again by its holder (a recursion
  finding, which would have hung the CPU): the earlier hold is not kept;
* ``gap``: events are missing (a ``gap`` row: a page or record the decoder could
  not read): every hold of every task ends there, so a damaged trace can lose
  findings but not make them up.
"""

from __future__ import annotations

from collections.abc import Iterator
from collections.abc import Set as AbstractSet

import numpy as np
import pandas as pd

from tracedep.analysis import replay_native
from tracedep.analysis.acquisitions import FORCED_CODE, AcqTable
from tracedep.analysis.replay_inputs import (
    irq_context,
    replay_inputs,
    switch_baseline,
    task_contexts,
    task_key,
)
from tracedep.analysis.replay_types import (
    ACQ_COLUMNS,
    ENABLED_HARDIRQ,
    ENABLED_HARDIRQ_READ,
    ENABLED_SOFTIRQ,
    ENABLED_SOFTIRQ_READ,
    RECURSIVE_READ,
    SHARED_TYPES,
    SPIN_TYPES,
    STATE_EXITED,
    STATE_PREEMPTED,
    USED_IN_HARDIRQ,
    USED_IN_HARDIRQ_READ,
    USED_IN_SOFTIRQ,
    USED_IN_SOFTIRQ_READ,
    AcqValues,
    EdgeAcc,
    Forced,
    Held,
    HolderOnStack,
    Recursion,
    Replay,
    SleepEvent,
)
from tracedep.tracer.probes import LOCK_FUNCS, SLEEPING_LOCK_TYPES

# the replay's names, whose types live in analysis.replay_types
__all__ = [
    "ACQ_COLUMNS", "AcqValues", "ENABLED_HARDIRQ", "ENABLED_HARDIRQ_READ",
    "ENABLED_SOFTIRQ", "ENABLED_SOFTIRQ_READ", "EdgeAcc", "Forced", "Held", "HolderOnStack",
    "RECURSIVE_READ", "Recursion", "Replay", "SHARED_TYPES",
    "SLEEPING_LOCK_TYPES", "SPIN_TYPES", "STATE_EXITED", "STATE_PREEMPTED", "SleepEvent",
    "USED_IN_HARDIRQ", "USED_IN_HARDIRQ_READ", "USED_IN_SOFTIRQ", "USED_IN_SOFTIRQ_READ",
    "Replayer", "irq_context", "replay", "task_contexts", "task_key",
]


def replay(events: pd.DataFrame, classes: np.ndarray,
           kprobe_irqs_reliable: bool = True, untraced: frozenset[int] = frozenset(),
           spin_in_preempt: bool = True, *, depth_counts_spin: bool = False,
           suspect_rows: AbstractSet[int] = frozenset(),
           holder_on_stack: HolderOnStack | None = None,
           own_classes: frozenset[int] = frozenset(),
           chunk_rows: int = 1 << 16, native: bool | None = None) -> Replay:
    """``classes``: the lock class of each row of ``events`` (-1: none).
    ``untraced``: pids whose own (process-context) events the guest filtered
    out; what is left of them is skipped, and lock hand-offs to and from them are balanced.
    ``spin_in_preempt``: False when the kernel's preempt_count does not count held
    spinlocks (no ``CONFIG_PREEMPT_COUNT``: the calibration tells, see
    tracer.calibration); held spinlocks then come from this replay alone.
    ``depth_counts_spin``: the calibration *measured* that it does (not merely
    assumed): a record's preempt depth then bounds the spinning locks held.
    ``suspect_rows``: acquire rows whose release may be invisible;
    ``holder_on_stack``: see :data:`HolderOnStack` (module docstring: forced releases).
    ``own_classes``: classes of the modules' own locks; never the runqueue lock, so a
    switch never hands one to the next task (where core spinlocks are inlined and
    unseen, arm64, a driver's lock is the top of a task that sleeps holding it).
    ``chunk_rows``: the events go to one :class:`Replayer` this many rows at a time,
    so the per-event lists it reads exist for one chunk only.
    ``native``: see :class:`Replayer`."""
    rp = Replayer(kprobe_irqs_reliable, untraced, spin_in_preempt,
                  depth_counts_spin=depth_counts_spin, own_classes=own_classes,
                  baseline=switch_baseline(events), native=native)
    for a in range(0, max(len(events), 1), chunk_rows):
        rp.feed(events.iloc[a:a + chunk_rows], classes[a:a + chunk_rows], row_offset=a,
                suspect_rows=suspect_rows, holder_on_stack=holder_on_stack)
    return rp.finish()


class Replayer:
    """The replay's state between chunks of events, fed in time order.

    What it keeps grows with tasks, held locks and classes, and with what the
    :class:`Replay` reports (acquisitions, sleeps, recursions); row numbers are the
    events' positions in the whole trace (``row_offset`` + position in the chunk).

    The loop runs in C (analysis.replay_native) where the library could be built, with
    the same results; ``native``: None uses it when it is at hand, False never (this
    module's Python loop, the reference), True always (an error where it is not)."""

    def __init__(self, kprobe_irqs_reliable: bool = True,
                 untraced: frozenset[int] = frozenset(), spin_in_preempt: bool = True, *,
                 depth_counts_spin: bool = False, own_classes: frozenset[int] = frozenset(),
                 baseline: int = 1, native: bool | None = None) -> None:
        self.kprobe_irqs_reliable = kprobe_irqs_reliable
        self.untraced = untraced
        self.spin_in_preempt = spin_in_preempt
        self.depth_counts_spin = depth_counts_spin
        self.own_classes = own_classes
        self.baseline = baseline  # switch_baseline()
        self.stacks: dict[tuple[int, str], list[Held]] = {}
        # calls whose return says whether they took the lock: (row, func, values, flags,
        # the class at the call, which the acquisition keeps; replay.c's pend_t likewise)
        self.pending: dict[tuple[int, str], list[tuple[int, str, AcqValues, str, int]]] = {}
        self.acqs = AcqTable()  # one row per acquisition
        self.edges: dict[tuple[int, int], list[EdgeAcc]] = {}
        self.usage: dict[int, dict[str, int]] = {}
        self.recursions: list[Recursion] = []
        self.sleeps: list[SleepEvent] = []
        self.unmatched = 0
        # sleeping locks: (acq, row)
        self.wait_open: dict[tuple[int, str], list[tuple[int, int]]] = {}
        self.last_holder: dict[int, tuple[int, str]] = {}
        self.irq_dirty: set[int] = set()
        self.leaked = 0
        self.irq_ended: list[tuple[int, int]] = []
        self.forced: list[Forced] = []
        # drain(): acquisitions from _mark on, and those of _kept (open at the last drain,
        # sorted), were not handed out yet
        self.drained = False
        self._mark = 0
        self._kept = np.zeros(0, np.int64)
        self._since = (0, 0, 0)  # since(): sleeps, forced, irq_ended read so far
        lib = replay_native.library() if native is not False else None
        if native and lib is None:
            raise RuntimeError("the native replay is not available (no C compiler, or "
                               "TRACEDEP_NATIVE=0)")
        self.native_required = native is True
        self.native = None if lib is None else replay_native.NativeReplayer(
            lib, kprobe_irqs_reliable, untraced, spin_in_preempt, depth_counts_spin,
            own_classes, baseline)

    def drain(self) -> pd.DataFrame:
        """The acquisitions settled since the last drain, and no longer kept here: those
        that can no longer change (released, handed off, ended by a forced release or
        by the return to process context, and on no wait list, where a lock_return may
        still set ``ts_acquired``).  Columns :data:`ACQ_COLUMNS` and ``acq`` (int64), the
        acquisition's index in the whole table, which every other part of the
        :class:`Replay` (sleeps, forced, irq_ended, held stacks) keeps using; in index
        order.  ``lock_type``'s categories are the lock types seen so far: each drain's
        are a prefix of the next one's (``acquisitions.concat_frames`` joins them).
        After a drain, :meth:`finish` gives only the acquisitions not drained yet.

        The C loop frees the rows it handed out (a block at a time, the few open ones
        moved aside: replay.c's ``drain_commit``); this Python loop, the reference, keeps
        its table whole."""
        self.drained = True
        if self.native is not None:
            return self.native.drain()
        n = len(self.acqs)
        cand = np.concatenate([self._kept, np.arange(self._mark, n, dtype=np.int64)])
        open_ = np.unique(np.fromiter(self._open(), np.int64))
        is_open = np.isin(cand, open_)
        if int(is_open.sum()) != len(open_):
            raise RuntimeError("an open acquisition was drained already")
        self._kept, self._mark = cand[is_open], n
        return self.acqs.frame(cand[~is_open])

    def undrained(self) -> pd.DataFrame:
        """The acquisitions not drained yet, as they are now (after a :meth:`drain`: the
        open ones), with column ``acq``; nothing is handed out."""
        if self.native is not None:
            return self.native.undrained()
        return self.acqs.frame(np.concatenate(
            [self._kept, np.arange(self._mark, len(self.acqs), dtype=np.int64)]))

    def pending_rows(self) -> np.ndarray:
        """The call rows of the lock calls whose return is still to decide them."""
        if self.native is not None:
            return self.native.pending_rows()
        return np.asarray([p[0] for calls in self.pending.values() for p in calls],
                          dtype=np.int64)

    def since(self) -> tuple[list[SleepEvent], list[Forced], list[tuple[int, int]]]:
        """The sleeps, forced releases and IRQ-ended pairs added since the last call (a
        stream reads what each window added)."""
        if self.native is not None:
            return self.native.since()
        was = self._since
        self._since = (len(self.sleeps), len(self.forced), len(self.irq_ended))
        return (self.sleeps[was[0]:], self.forced[was[1]:], self.irq_ended[was[2]:])

    def forget_sleeps(self) -> None:
        """Drop the sleeps :meth:`since` handed out (analysis.sleep_fold keeps them)."""
        if self.native is not None:
            return self.native.forget_sleeps()
        del self.sleeps[:self._since[0]]  # in place: a feed's loop holds this list
        self._since = (0, self._since[1], self._since[2])

    def _open(self) -> Iterator[int]:
        """The acquisitions still open: held, or waited for."""
        for st in self.stacks.values():
            for h in st:
                yield h.acq
        for wo in self.wait_open.values():
            for acq, _ in wo:
                yield acq

    def finish(self) -> Replay:
        """The :class:`Replay` so far.  Its acquisitions are the whole table (no column
        ``acq``, the index is the position) if :meth:`drain` was never called; after a
        drain, those not drained yet (open ones and those settled since), with ``acq``."""
        if self.native is not None:
            return self.native.finish()
        if self.drained:
            acqs = self.acqs.frame(np.concatenate(
                [self._kept, np.arange(self._mark, len(self.acqs), dtype=np.int64)]))
        else:
            acqs = self.acqs.frame()
        rep = Replay(acqs, self.edges, self.usage, self.recursions,
                     self.sleeps, self.baseline, self.unmatched)
        rep.irq_leaked = self.leaked
        rep.irq_ended = self.irq_ended
        rep.forced = self.forced
        return rep

    # long: the hot loop, one pass per event; splitting its body would add calls per event
    def feed(self, events: pd.DataFrame, classes: np.ndarray, *, row_offset: int = 0,
             suspect_rows: AbstractSet[int] = frozenset(),
             holder_on_stack: HolderOnStack | None = None) -> None:
        """Replay ``events`` (the next rows of the trace, from ``row_offset`` on), whose
        lock classes are ``classes`` (one per row, -1: none); ``suspect_rows`` and
        ``holder_on_stack`` take whole-trace rows."""
        if self.native is not None:
            if self.native.feed(events, classes, row_offset, suspect_rows,
                                holder_on_stack, self.untraced):
                return
            if self.native_required:
                raise TypeError("the native replay takes the schema's integer columns")
            self.native = None  # columns C does not take: the Python loop from the start
        local_rows, columns = replay_inputs(events, self.untraced)
        rows = local_rows + row_offset
        cls_l = np.asarray(classes)[local_rows].tolist()
        (pid, cpu, ts, addr, irqs_off, bh_off, hard, soft, nmi, depth, kind_l, ltype_l,
         flags_l, value_l, ev_l, target_l) = columns
        kprobe_irqs_reliable, untraced = self.kprobe_irqs_reliable, self.untraced
        spin_in_preempt, depth_counts_spin = self.spin_in_preempt, self.depth_counts_spin
        own_classes, baseline = self.own_classes, self.baseline
        stacks, pending, acqs, edges = self.stacks, self.pending, self.acqs, self.edges
        # the acquisition columns the loop writes (AcqTable)
        a_row, a_acquired, a_release, a_release_row, a_handed, a_forced = (
            acqs.row, acqs.ts_acquired, acqs.ts_release, acqs.release_row, acqs.handed_off,
            acqs.forced)
        usage, recursions, sleeps, forced = self.usage, self.recursions, self.sleeps, self.forced
        wait_open, last_holder, irq_dirty = self.wait_open, self.last_holder, self.irq_dirty
        unmatched, leaked, irq_ended = self.unmatched, self.leaked, self.irq_ended

        def new_acq(r: int, v: AcqValues, cls: int, task: int, ctx: str, tryl: bool) -> int:
            return acqs.append(r, cls, v[0], v[1], ctx, task, v[5], tryl, v[3], v[4])

        def end(st: list[Held], j: int, r: int, why: str) -> None:
            # no release time: the lock ended somewhere before ``r``, not at it
            h = st.pop(j)
            a_forced[h.acq] = FORCED_CODE[why]
            forced.append(Forced(h.acq, r, why))

        def drop_unconfirmed(task: int, r: int) -> None:
            """At a may-sleep event, where preempt_count cannot tell: a suspect spinning
            lock whose taker is no longer on the stack was released unseen."""
            st = stacks.get((task, "process"))
            if depth_counts_spin or not st:
                return
            for j in range(len(st) - 1, -1, -1):
                h = st[j]
                if h.suspect and h.ltype in SPIN_TYPES and (
                        holder_on_stack is None or holder_on_stack(h.row, r) is not True):
                    end(st, j, r, "release-unseen")

        def depth_bound(task: int, r: int, i: int) -> None:
            """Fewer preempt levels than spinning locks held: the excess was released."""
            st = stacks.get((task, "process"))
            if not st:
                return
            spins = [j for j, h in enumerate(st) if h.ltype in SPIN_TYPES]
            excess = len(spins) - int(depth[i])
            if excess <= 0:
                return
            # a suspect release first, then the innermost (locks nest)
            gone = sorted(spins, key=lambda j: (not st[j].suspect, -j))[:excess]
            for j in sorted(gone, reverse=True):
                end(st, j, r, "preempt-count")

        def release_in(st: list[Held], a: int, rel_lt: str, t: int, r: int,
                       handed: bool) -> bool:
            """End the innermost hold of ``a`` in ``st`` (a release without a lock
            type matches either family); False if ``st`` holds none."""
            for j in range(len(st) - 1, -1, -1):
                if st[j].addr == a and (not rel_lt or (st[j].ltype in SPIN_TYPES)
                                        == (rel_lt in SPIN_TYPES)):
                    h = st.pop(j)
                    a_release[h.acq] = t
                    a_release_row[h.acq] = r
                    if handed:
                        a_handed[h.acq] = True
                    return True
            return False

        def mark(cls: int, bit: str, r: int) -> None:
            u = usage.setdefault(cls, {})
            if bit not in u:
                u[bit] = r

        def acquire(r: int, v: AcqValues, task: int, ctx: str, tryl: bool, flags: str,
                    cls: int) -> None:
            if v[1] == "semaphore":
                # counting semaphores have no owner (up() often comes from another
                # task) and lockdep does not track them: they matter only as a
                # sleeping call, which is checked where they are called
                return
            stack = stacks.setdefault((task, ctx), [])
            lt = v[1]
            shared = lt in SHARED_TYPES
            # rwlock_t readers nest only in interrupt context (queued rwlocks: Linux
            # kernel commit e918188611f0 ("locking: More accurate annotations for
            # read_lock()") (in v5.10)); process-context readers wait behind writers
            rec_read = lt in RECURSIVE_READ and ctx != "process"
            # a *_nested() call exists only with lockdep (DEBUG_LOCK_ALLOC), where plain
            # mutex_lock() is mutex_lock_nested(lock, 0) too: subclass 0 is no annotation
            nested = "nested" in flags and v[2] != 0
            a = v[0]
            # a spinning and a sleeping lock at one address are two locks (an rt_mutex's
            # wait_lock is its first member): an instance is its address and its family
            spin = lt in SPIN_TYPES
            if not tryl:
                for j in range(len(stack) - 1, -1, -1):
                    h = stack[j]
                    if h.addr == a and h.suspect and lt in SPIN_TYPES and not rec_read:
                        # a spinning lock taken again by its holder would have hung the
                        # machine; its release was unseen
                        end(stack, j, r, "release-unseen")
                for h in stack:
                    if h.addr == a and (h.ltype in SPIN_TYPES) == spin:
                        if not (rec_read and h.ltype in SHARED_TYPES):
                            recursions.append(Recursion(r, h.row, True, cls))
                    elif h.cls == cls and not nested and not h.nested:
                        recursions.append(Recursion(r, h.row, False, cls))
                if lt in SPIN_TYPES and not rec_read:
                    # reported once; a spinning lock is held at most once (taken again
                    # it hangs the CPU), so the earlier hold is not kept: else its one
                    # release leaves it "held" for ever (a probe counted twice did that)
                    for j in range(len(stack) - 1, -1, -1):
                        if stack[j].addr == a and stack[j].ltype in SPIN_TYPES:
                            end(stack, j, r, "re-acquired")
                for h in stack:
                    if (h.addr == a and (h.ltype in SPIN_TYPES) == spin) or h.cls == cls:
                        continue
                    key = (h.cls, cls)
                    accs = edges.setdefault(key, [])
                    hs = h.ltype in SHARED_TYPES
                    for acc in accs:
                        if acc.before_shared == hs and acc.after_recursive_read == rec_read:
                            acc.count += 1
                            break
                    else:
                        accs.append(EdgeAcc(1, r, h.row, hs, rec_read, ctx))
            # usage bits; the lock function itself masks IRQs/BH for its variants
            eff_irqs_off = v[3] or "irq" in flags  # "irq" and "irqsave"
            eff_bh_off = v[4] or "bh" in flags or ctx != "process"
            if not tryl:
                if ctx == "hardirq":
                    mark(cls, USED_IN_HARDIRQ_READ if shared else USED_IN_HARDIRQ, r)
                elif ctx == "softirq":
                    mark(cls, USED_IN_SOFTIRQ_READ if shared else USED_IN_SOFTIRQ, r)
            if kprobe_irqs_reliable and not eff_irqs_off and ctx in ("process", "softirq"):
                mark(cls, ENABLED_HARDIRQ_READ if shared else ENABLED_HARDIRQ, r)
                if not eff_bh_off:
                    mark(cls, ENABLED_SOFTIRQ_READ if shared else ENABLED_SOFTIRQ, r)
            acq = new_acq(r, v, cls, task, ctx, tryl)
            stack.append(Held(acq, a, cls, lt, r, tryl, nested, r in suspect_rows))
            last_holder[a] = (task, ctx)
            if lt in SLEEPING_LOCK_TYPES:
                wait_open.setdefault((task, ctx), []).append((acq, r))

        for i, r in enumerate(rows.tolist()):
            k = kind_l[i]
            if k == "gap":
                # events are missing: any task may have released what it held (or taken
                # what it now releases) unseen.  Forget every hold, so that damage can
                # lose findings but never make one up.
                for held in stacks.values():
                    for j in range(len(held) - 1, -1, -1):
                        end(held, j, r, "gap")
                stacks.clear()
                pending.clear()
                wait_open.clear()
                last_holder.clear()
                continue
            p = pid[i]
            task = p if p > 0 else -1 - cpu[i]  # task_key(), inline: once per event
            ctx = irq_context(hard[i], soft[i], nmi[i])
            if ctx != "process":
                irq_dirty.add(task)
            elif task in irq_dirty:
                # Back in process context: no interrupt handler can still hold a lock.
                # Whatever is left is an unlock that was missed (a probe that fired
                # inside another probe's handler), not a lock to build on.
                irq_dirty.discard(task)
                for c in ("hardirq", "softirq", "nmi"):
                    left = stacks.pop((task, c), None)
                    if left:
                        leaked += len(left)
                        irq_ended += [(h.acq, r) for h in left]
            if depth_counts_spin and ctx == "process" and k in ("lock_acquire", "sleep_call",
                                                                "alloc"):
                depth_bound(task, r, i)
            if k == "lock_acquire":
                fn = ev_l[i].partition("_")[2]
                lf = LOCK_FUNCS.get(fn)
                flags = flags_l[i]
                # the values, not the row: a pending call may return in a later chunk
                vals = (addr[i], ltype_l[i], value_l[i], irqs_off[i], bh_off[i], ts[i])
                if lf is not None and lf.success:
                    pending.setdefault((task, ctx), []).append((r, fn, vals, flags, cls_l[i]))
                else:
                    # an inlined trylock arrives already resolved (tracer.inline_locks)
                    acquire(r, vals, task, ctx, "trylock" in flags, flags, cls_l[i])
                if ltype_l[i] in SLEEPING_LOCK_TYPES and "trylock" not in flags:
                    drop_unconfirmed(task, r)
                    _check_sleep(sleeps, stacks, r, i, task, ctx, hard, soft, irqs_off, bh_off,
                                 depth, kprobe_irqs_reliable, spin_in_preempt)
            elif k == "lock_return":
                fn = ev_l[i].partition("_")[2]
                lf = LOCK_FUNCS.get(fn)
                pend = pending.get((task, ctx))
                if pend and pend[-1][1] == fn:
                    prow, _, pvals, pflags, pcls = pend.pop()
                    ok = (value_l[i] != 0) if lf and lf.success == "nonzero" else (value_l[i] == 0)
                    if ok:
                        acquire(prow, pvals, task, ctx, lf is not None and "trylock" in lf.flags,
                                pflags, pcls)
                        # a sleeping lock's wait ends when the call returns, and it
                        # leaves the wait list (else a later return without a call of
                        # its own would end it again, and it would stay open)
                        if a_row and a_row[-1] == prow:
                            a_acquired[-1] = ts[i]
                        wo = wait_open.get((task, ctx))
                        if wo and wo[-1][1] == prow:
                            wo.pop()
                else:
                    wo = wait_open.get((task, ctx))
                    if wo:
                        acq, _ = wo.pop()
                        a_acquired[acq] = ts[i]
            elif k == "lock_release":
                a = addr[i]
                # (a release without a lock type matches either family)
                rel_lt = ltype_l[i]
                found = False
                for key in ((task, ctx), (task, "process"), (task, "softirq"), (task, "hardirq")):
                    st = stacks.get(key)
                    if st and release_in(st, a, rel_lt, ts[i], r, False):
                        found = True
                        break
                if not found:
                    # Released by another task: semaphores used as completions, and the
                    # runqueue lock that __schedule() hands to the next task (lockdep
                    # annotates the same hand-off in prepare_lock_switch()).  The holder
                    # is whoever took this instance last.
                    hk = last_holder.get(a)
                    found = hk in stacks and release_in(stacks[hk], a, rel_lt, ts[i], r, True)
                if not found:
                    unmatched += 1  # taken before tracing started
            elif k == "sched_switch":
                # __schedule() takes the runqueue lock last and the next task releases
                # it (lockdep moves it across in prepare/finish_lock_switch()): the
                # lock on top of prev's stack goes to next.  This also balances tasks
                # whose own events are not traced (the trace pumps).
                st = stacks.get((task, "process"), [])
                top = next((j for j in range(len(st) - 1, -1, -1) if st[j].ltype in SPIN_TYPES),
                           None)
                if top is not None and st[top].cls in own_classes:
                    top = None  # slept holding its driver's lock: it keeps it (a finding)
                if top is not None:
                    h = st.pop(top)
                    tp = target_l[i]
                    if tp in untraced:  # it releases the lock where we cannot see
                        a_release[h.acq] = ts[i]
                        a_handed[h.acq] = True
                    else:
                        nkey = (tp if tp > 0 else -1 - cpu[i], "process")
                        stacks.setdefault(nkey, []).append(h)
                        last_holder[h.addr] = nkey
                v = value_l[i]
                if v & (STATE_PREEMPTED | STATE_EXITED):
                    # preempted: no spinning lock held; exited: no lock at all
                    why = "user-space" if v & STATE_EXITED else "preempted"
                    for j in range(len(st) - 1, -1, -1):
                        if why == "user-space" or st[j].ltype in SPIN_TYPES:
                            end(st, j, r, why)
                elif v != 0:  # a voluntary switch: the task sleeps
                    drop_unconfirmed(task, r)
                    held = [h for h in st if h.ltype in SPIN_TYPES]
                    if held:
                        sleeps.append(SleepEvent(r, ["spinlock"], [h.acq for h in held],
                                                 [h.acq for h in st],
                                                 max(depth[i] - baseline, 0)))
            elif k == "marker":
                # written by a syscall of this task: it came from user space, where
                # it held no kernel lock
                st = stacks.get((task, "process"), [])
                for j in range(len(st) - 1, -1, -1):
                    end(st, j, r, "user-space")
            else:  # sleep_call or alloc that may reclaim
                drop_unconfirmed(task, r)
                _check_sleep(sleeps, stacks, r, i, task, ctx, hard, soft, irqs_off, bh_off, depth,
                             kprobe_irqs_reliable, spin_in_preempt)

        self.unmatched, self.leaked = unmatched, leaked


def _check_sleep(sleeps: list[SleepEvent], stacks: dict[tuple[int, str], list[Held]], r: int,
                 i: int, task: int, ctx: str, hard: list[bool], soft: list[bool],
                 irqs_off: list[bool], bh_off: list[bool], depth: list[int],
                 irqs_reliable: bool, spin_in_preempt: bool = True) -> None:
    # every atomic state shows in the record (a held spinlock raises preempt_count),
    # unless preempt_count does not count spinlocks: then the replay's own stacks tell
    if not (depth[i] or hard[i] or soft[i] or bh_off[i] or (irqs_reliable and irqs_off[i])
            or (not spin_in_preempt and any(h.ltype in SPIN_TYPES for key in (
                (task, ctx), (task, "process")) for h in stacks.get(key, [])))):
        return
    held_all = list(stacks.get((task, ctx), []))
    if ctx != "process":
        held_all = list(stacks.get((task, "process"), [])) + held_all
    spin = [h for h in held_all if h.ltype in SPIN_TYPES]
    reasons: list[str] = []
    if hard[i]:
        reasons.append("hardirq")
    elif soft[i]:
        reasons.append("softirq")
    if spin:
        reasons.append("spinlock")
    if irqs_reliable and irqs_off[i]:
        reasons.append("irqs-off")
    if bh_off[i] and not soft[i] and not hard[i]:
        reasons.append("bh-off")
    # every held spinning lock accounts for one level of preempt_count
    own = [h for h in stacks.get((task, ctx), []) if h.ltype in SPIN_TYPES]
    extra = depth[i] - (len(own) if spin_in_preempt else 0)
    if extra > 0 and ctx == "process":
        reasons.append("preempt")
    if reasons:
        sleeps.append(SleepEvent(r, reasons, [h.acq for h in spin], [h.acq for h in held_all],
                                 max(extra, 0)))
