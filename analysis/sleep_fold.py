"""A stream's sleeps in atomic context, one kept per verdict, the rest counted.

The replay reports every may-sleep event in atomic context. A driver that sleeps under
a spinlock in a loop does it millions of times from a few code paths; the whole frame
keeps them all and the rule (analysis.sleep_rules) judges the first of each verdict
and counts the rest. A stream cannot keep them all: its memory must not grow with
events. :class:`SleepFold` keys each sleep by what the verdict on it reads
(``sleep_rules.verdict_key``) as the windows go by, keeps the first of each key with
the number it stands for (``SleepEvent.repeats``), and lets the replay forget the rest
(``Replayer.forget_sleeps``). The findings, counts and witnesses are the whole frame's.

What the verdict reads beyond the sleep's own row is the task's other may-sleep calls
within a millisecond (``sleep_rules.around_of``): the fold keeps each task's calls of
the last millisecond for that, and holds a might_sleep() back until a millisecond of
the trace has passed after it (or the task's next call came), since a call just after
it makes it part of that call's incident. The fold stores what it found there on the
sleep (``SleepEvent.around``), so the rule does not need the neighbours again.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import numpy as np
import pandas as pd

from tracedep.analysis.replay_types import SleepEvent
from tracedep.analysis.run_symbols import RunSymbols
from tracedep.analysis.sleep_rules import NEAR_NS, SleepRow, is_might_sleep, verdict_key

# a task's catalog call of the last millisecond: (time, is a sleep_call, function, call site)
_Call = tuple[int, bool, object, int]


class SleepFold:
    """The sleeps of a stream's replay, fed a window at a time (:meth:`add`, then
    :meth:`window_end`), one kept per verdict key (:meth:`finish`)."""

    def __init__(self, stacks: list[tuple[int, ...]], symbols: RunSymbols) -> None:
        self.stacks = stacks
        self.symbols = symbols
        self._kept: dict[tuple[object, ...], SleepEvent] = {}
        self._recent: dict[int, deque[_Call]] = {}  # per task: its calls of the last ms
        # per task: its might_sleep() sleeps whose next millisecond is not all seen yet,
        # with their row and the key without what is around them
        self._waiting: dict[int, list[tuple[SleepEvent, SleepRow, list[int]]]] = {}

    def add(self, sleeps: list[SleepEvent], ev: pd.DataFrame, row0: int,
            classes: Callable[[list[int]], list[int]]) -> list[SleepEvent]:
        """Take the window's new sleeps (row order; ``ev``: the window, from trace row
        ``row0``; ``classes``: the lock classes of acquisitions).  Returns those kept or
        held back for now: the acquisitions they name must be kept."""
        if not sleeps:
            return []
        local = np.asarray([s.row - row0 for s in sleeps], dtype=np.int64)
        cols = {c: ev[c].to_numpy()[local] for c in ("ts_ns", "ip", "stack_id", "value",
                                                      "gfp", "pid")}
        labels = {c: ev[c].iloc[local].astype(object).to_numpy() for c in
                  ("kind", "func", "event")}
        out = []
        for k, s in enumerate(sleeps):
            row = SleepRow(int(cols["ts_ns"][k]), int(cols["ip"][k]), int(cols["stack_id"][k]),
                           labels["kind"][k], labels["func"][k], labels["event"][k],
                           int(cols["value"][k]), int(cols["gfp"][k]))
            pid = int(cols["pid"][k])
            held = classes(s.held)
            recent = self._recent.setdefault(pid, deque())
            while recent and recent[0][0] <= row.ts - NEAR_NS:
                recent.popleft()
            if is_might_sleep(row.kind, row.func):
                if recent:  # a call of the task in the millisecond before
                    out += self._keep(s, row, True, held)
                else:
                    self._waiting.setdefault(pid, []).append((s, row, held))
                    out.append(s)
                continue
            self._settle(pid, row.ts)
            around: object = None
            if row.kind == "sleep_call":
                before = [c for c in recent if c[1] and c[0] < row.ts]
                around = (frozenset(str(c[2]) for c in before),
                          bool(row.ip) and any(c[3] == row.ip and c[2] != row.func
                                               for c in before))
            recent.append((row.ts, row.kind == "sleep_call", row.func, row.ip))
            out += self._keep(s, row, around, held)
        return out

    def window_end(self, ts: int) -> None:
        """The trace has reached ``ts``: no later call can be near a might_sleep()
        a millisecond or more before it."""
        for pid in list(self._waiting):
            self._settle(pid, ts, only_far=True)

    def finish(self) -> list[SleepEvent]:
        """The kept sleeps, in row order (the trace has ended: every might_sleep()
        still held back had no call after it)."""
        for pid in list(self._waiting):
            for s, row, held in self._waiting.pop(pid):
                self._keep(s, row, False, held)
        return sorted(self._kept.values(), key=lambda s: s.row)

    def _settle(self, pid: int, ts: int, only_far: bool = False) -> None:
        """The task's might_sleep() sleeps held back, now that a call of it came at
        ``ts`` (near those less than a millisecond before), or (``only_far``) the
        trace reached ``ts`` (those a millisecond or more before had no call after)."""
        waiting = self._waiting.get(pid)
        if not waiting:
            return
        left = []
        for s, row, held in waiting:
            near = ts - row.ts < NEAR_NS
            if only_far and near:
                left.append((s, row, held))
            else:
                self._keep(s, row, near, held)
        if left:
            self._waiting[pid] = left
        else:
            del self._waiting[pid]

    def _keep(self, s: SleepEvent, row: SleepRow, around: object, held: list[int]
              ) -> list[SleepEvent]:
        """``s`` folded into the first sleep of its key; itself if it is the first."""
        s.folded, s.around = True, around
        key = verdict_key(self.stacks, self.symbols, row, None, around, s.reasons, held)
        first = self._kept.get(key)
        if first is None:
            self._kept[key] = s
            return [s]
        if s.row < first.row:  # held back longer than a later one of its key
            s.repeats += first.repeats
            self._kept[key] = s
            return [s]
        first.repeats += s.repeats
        return []
