"""The held-lock replay's types and constants (analysis.heldlocks, whose module
docstring gives the semantics); shared by its Python loop and its C twin
(analysis.replay_native)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

ACQ_COLUMNS = ("row", "cls", "addr", "lock_type", "ctx", "task", "ts_acquire", "ts_acquired",
               "ts_release", "release_row", "trylock", "irqs_off", "bh_off", "handed_off",
               "forced")  # forced: the reason (acquisitions.FORCED_REASONS) it ended unreleased
SPIN_TYPES = frozenset({"spinlock", "rwlock-r", "rwlock-w"})
SHARED_TYPES = frozenset({"rwlock-r", "rwsem-r"})
RECURSIVE_READ = frozenset({"rwlock-r"})  # rwlock_t readers may nest; rwsem readers may not
# sched_switch prev_state (include/linux/sched.h, 6.1 and 6.12): TASK_REPORT_MAX
# marks a preempted task; EXIT_DEAD/EXIT_ZOMBIE a task's last switch
STATE_PREEMPTED = 0x100
STATE_EXITED = 0x10 | 0x20


class RowSet(AbstractSet[int]):
    """Rows of the trace, as one sorted array: 8 bytes a row, where a frozenset of ints
    takes about a hundred.  On a trace whose kprobes missed any release every spinlock
    acquisition is suspect (analysis.missing): 5.2 M rows of 21.9 M events, 530 MB as a
    frozenset.  Membership is a binary search."""

    __slots__ = ("rows",)

    def __init__(self, rows: Iterable[int] = ()) -> None:
        self.rows: np.ndarray = np.unique(np.fromiter(rows, dtype=np.int64))

    @classmethod
    def of_sorted(cls, rows: np.ndarray) -> RowSet:
        """From rows already sorted and distinct (not checked again)."""
        out = cls.__new__(cls)
        out.rows = np.ascontiguousarray(rows, dtype=np.int64)
        return out

    def __contains__(self, r: object) -> bool:
        if not isinstance(r, int | np.integer):
            return False
        i = int(np.searchsorted(self.rows, r))
        return i < len(self.rows) and int(self.rows[i]) == int(r)

    def contains(self, values: np.ndarray) -> np.ndarray:
        """Membership of each of ``values``, by binary search (``np.isin`` would sort
        the millions of rows again for every chunk that asks)."""
        values = np.asarray(values, dtype=np.int64)
        if not len(self.rows):
            return np.zeros(len(values), dtype=bool)
        at = np.minimum(np.searchsorted(self.rows, values), len(self.rows) - 1)
        return self.rows[at] == values

    def __iter__(self) -> Iterator[int]:
        return iter(self.rows.tolist())

    def __len__(self) -> int:
        return len(self.rows)


# usage bits (lockdep's names)
USED_IN_HARDIRQ = "IN-HARDIRQ-W"
USED_IN_HARDIRQ_READ = "IN-HARDIRQ-R"
USED_IN_SOFTIRQ = "IN-SOFTIRQ-W"
USED_IN_SOFTIRQ_READ = "IN-SOFTIRQ-R"
ENABLED_HARDIRQ = "HARDIRQ-ON-W"
ENABLED_HARDIRQ_READ = "HARDIRQ-ON-R"
ENABLED_SOFTIRQ = "SOFTIRQ-ON-W"
ENABLED_SOFTIRQ_READ = "SOFTIRQ-ON-R"


@dataclass
class Held:
    acq: int  # index into acquisitions
    addr: int
    cls: int
    ltype: str
    row: int  # event row of the acquire
    trylock: bool
    nested: bool
    suspect: bool = False  # its release may be invisible (analysis.missing)


@dataclass
class EdgeAcc:
    count: int
    row: int  # event row acquiring ``after`` (first witness)
    held_row: int  # event row where ``before`` was acquired
    before_shared: bool
    after_recursive_read: bool
    ctx: str


@dataclass
class SleepEvent:
    row: int
    reasons: list[str]  # "spinlock", "preempt", "irqs-off", "bh-off", "softirq", "hardirq"
    held: list[int]  # acquisition indices of spin/rwlocks held (and all held, for the report)
    all_held: list[int]
    preempt_extra: int  # preempt depth not explained by held spinning locks
    # a stream folds the sleeps one verdict judges alike into the first (analysis.sleep_fold):
    # how many it stands for, and (``folded``) what its task's other may-sleep calls around
    # it said, which the rule would otherwise read from them (sleep_rules.around_of)
    repeats: int = 1
    folded: bool = False
    around: object = None


@dataclass
class Recursion:
    row: int
    held_row: int
    same_instance: bool
    cls: int


@dataclass(frozen=True)
class Forced:
    """A held lock ended without its release being seen."""

    acq: int  # index into acquisitions
    row: int  # event row whose evidence ended it
    reason: str  # one of acquisitions.FORCED_REASONS


# an acquisition's values from its event: lock_addr, lock_type, value, irqs_off, bh_off, ts_ns
AcqValues = tuple[int, str, int, bool, bool, int]

# (acquire row, event row) -> is the function that took the lock on the event's
# stack?  None when the event has no stack or the function is unknown
HolderOnStack = Callable[[int, int], bool | None]


@dataclass
class Replay:
    acquisitions: pd.DataFrame
    edges: dict[tuple[int, int], list[EdgeAcc]]  # one accumulator per mode variant
    usage: dict[int, dict[str, int]]  # class → usage bit → first event row
    recursions: list[Recursion]
    sleeps: list[SleepEvent]
    switch_baseline: int
    unmatched_releases: int = 0
    irq_leaked: int = 0  # interrupt-context locks never released (their unlock was missed)
    # (acquisition, row) of each: held no later than that row (back in process context)
    irq_ended: list[tuple[int, int]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    forced: list[Forced] = field(default_factory=list)
