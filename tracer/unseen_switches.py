"""Where a CPU's trace goes from one task to another with no context switch between.

Every ftrace record carries the pid of the task running on its CPU (``common_pid``
is ``current``'s, in interrupt handlers too), and a task only starts running on a
CPU through ``__schedule()``, which traces ``sched_switch`` before it switches.  So
on one CPU, after a ``sched_switch`` to task B, the records are the switching task's
own (the rest of ``__schedule()``), then B's, up to the next ``sched_switch``.

A record of any other task means records are missing before it, though neither the
page walk (tracer.ring_pages) nor the guest's ring-buffer counters saw anything
lost: the release of a lock, or the switch itself, went somewhere.  Measured once on
a real run (Debian's drivers under their workload, x86_64): ``init`` took a VMA lock
in a page fault and the next record on its CPU, 6.4 ms later, was another task's;
without this, the replay kept that lock held by ``init`` for the rest of the run and
made up three findings.  The decoder puts a ``gap`` row before such a record
(tracer.schema), so the analysis forgets what was held there instead of building on
a release it never saw (analysis.heldlocks), and every report says so.

Not judged: a CPU's records before its first ``sched_switch``, and after a gap until
its next one (which task runs there is not known from the trace); and ``sched_switch``
records themselves, which a trace filtered by pid has from tasks it otherwise leaves
out (see :func:`find`).  One change of pid
is legitimate and untraced: a thread other than the leader that calls ``exec`` takes
the leader's pid (``de_thread()``, ``exchange_tids()``).  It too becomes a gap: what
was held there is forgotten, which may lose a finding but never makes one up.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

UNKNOWN = -2  # no sched_switch seen since the CPU's trace began or since a gap


@dataclass(frozen=True)
class UnseenSwitch:
    """One place the running task changed without a traced context switch."""

    cpu: int
    ts_ns: int  # the time of the first record after the change
    from_pid: int
    to_pid: int
    # that record's position in the arrays :func:`find` was given
    index: int = field(default=-1, compare=False)

    def record(self) -> dict[str, int]:
        """As the manifest keeps it (``lost.decoder_unseen_switch``)."""
        return {"cpu": self.cpu, "ts_ns": self.ts_ns, "from_pid": self.from_pid,
                "to_pid": self.to_pid}

    @classmethod
    def from_record(cls, d: dict[str, int]) -> UnseenSwitch | None:
        keys = ("cpu", "ts_ns", "from_pid", "to_pid")
        if not all(isinstance(d.get(k), int) for k in keys):
            return None
        return cls(*(int(d[k]) for k in keys))


@dataclass
class SwitchState:
    """Per CPU, what one batch of records leaves to the next (tracer.decode_stream):
    the last record's pid and the task the last ``sched_switch`` went to."""

    last_pid: dict[int, int] = field(default_factory=dict)
    target: dict[int, int] = field(default_factory=dict)


def find(cpu: np.ndarray, pid: np.ndarray, ts: np.ndarray, is_switch: np.ndarray,
         target: np.ndarray, gap_cpu: np.ndarray, gap_ts: np.ndarray,
         state: SwitchState | None = None) -> list[UnseenSwitch]:
    """The records (one CPU's after the other, each CPU's in record order) that follow
    an unseen change of task.  ``gap_cpu``/``gap_ts``: where events are already known
    missing (a gap goes before a CPU's first record at or after its time), after which
    the running task is unknown.  ``state``: the previous batch's (updated)."""
    st = state if state is not None else SwitchState()
    out: list[UnseenSwitch] = []
    for c in np.unique(cpu).tolist():
        rows = np.nonzero(cpu == c)[0]
        p = pid[rows].astype(np.int64)
        sw_rec = is_switch[rows]
        sw_at = np.nonzero(sw_rec)[0]
        tg = target[rows[sw_at]].astype(np.int64)
        mine = gap_ts[gap_cpu == c]
        # record times per CPU only go forward (pages out of time order are dropped);
        # the running maximum keeps the search defined if one does not
        reset_at = (np.unique(np.searchsorted(np.maximum.accumulate(ts[rows]), mine))
                    if len(mine) else np.zeros(0, np.int64))
        reset_at = reset_at[reset_at < len(rows)]
        before = st.last_pid.get(c)
        carried = st.target.get(c, UNKNOWN)
        # only where the pid differs from the record before it (few: about one per
        # switch) is anything to judge
        cand = np.nonzero(p[1:] != p[:-1])[0] + 1
        if before is not None and p[0] != before:
            cand = np.concatenate([[0], cand])
        prev = np.where(cand > 0, p[np.maximum(cand - 1, 0)], -1 if before is None else before)
        k = np.searchsorted(sw_at, cand, side="left") - 1  # the last switch before it
        last_sw = np.where(k >= 0, sw_at[np.maximum(k, 0)] if len(sw_at) else -1, -1)
        j = np.searchsorted(reset_at, cand, side="right") - 1  # the last gap at or before
        last_reset = np.where(j >= 0, reset_at[np.maximum(j, 0)] if len(reset_at) else -1, -1)
        expect = np.where((last_sw >= 0) & (last_sw >= last_reset),
                          tg[np.maximum(k, 0)] if len(tg) else UNKNOWN,
                          np.where(last_reset < 0, carried, UNKNOWN))
        # a sched_switch record is not judged: with event pid filtering (set_event_pid,
        # trace-cmd -P) a switch between two untraced tasks is not recorded, and the
        # next one (an untraced task's switch to a traced one) is recorded as the
        # untraced task's; every other record is a traced task's, switched in by a
        # switch that was recorded
        bad = np.nonzero((expect != UNKNOWN) & (p[cand] != expect) & ~sw_rec[cand])[0]
        out += [UnseenSwitch(int(c), int(ts[rows[cand[i]]]), int(prev[i]), int(p[cand[i]]),
                             int(rows[cand[i]])) for i in bad.tolist()]
        st.last_pid[c] = int(p[-1])
        last = int(sw_at[-1]) if len(sw_at) else -1
        last_gap = int(reset_at[-1]) if len(reset_at) else -1
        st.target[c] = (int(tg[-1]) if last >= 0 and last >= last_gap
                        else carried if last_gap < 0 else UNKNOWN)
    return out


def note(count: int, first: UnseenSwitch | None) -> str:
    """The words every report gives them."""
    where = (f" (first on cpu{first.cpu} at {first.ts_ns / 1e9:.6f} s: pid {first.from_pid}, "
             f"then pid {first.to_pid})" if first else "")
    return (f"{count:,} time(s) a CPU went from one task to another with no context switch "
            f"traced between{where}: events are missing there that the ring buffer did not "
            f"count as lost; each is treated as a gap, and what was held there forgotten "
            f"(tracer/unseen_switches.py)")
