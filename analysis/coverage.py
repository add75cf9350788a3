"""What each module under test exercised: lock classes it owns, lock operations at its code.

A module with no finding is only as good as what it ran: the driver table shows
these next to its load result, so a driver that took no lock (or whose load
failed) is not mistaken for a clean one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from tracedep.analysis.classes import LockClass
from tracedep.analysis.replay_inputs import kind_is
from tracedep.analysis.run_symbols import RunSymbols

LOCK_KINDS = ("lock_acquire", "lock_release", "lock_return")


@dataclass(frozen=True)
class ModuleCoverage:
    lock_classes: int  # classes of locks the module defines or allocates
    lock_events: int  # lock acquire/release/return events whose call site is its code


def coverage(events: pd.DataFrame, symbols: RunSymbols, table: list[LockClass],
             names: list[str]) -> dict[str, ModuleCoverage]:
    want = set(names)
    rows = np.nonzero(kind_is(events["kind"], LOCK_KINDS))[0]
    ip = events["ip"].to_numpy()[rows]
    ts = events["ts_ns"].to_numpy()[rows]
    hits: dict[str, np.ndarray] = {n: np.zeros(len(rows), dtype=bool) for n in want}
    # a call site is the module's while that load of the module lives (its
    # addresses are reused by the next module once it is unloaded)
    for span in symbols.modules:
        if span.name in want and len(rows):
            hits[span.name] |= ((ip >= span.lo) & (ip < span.hi)
                                & (ts >= span.t0) & (ts < span.t1))
    owned: dict[str, int] = {}
    for c in table:
        if c.module in want:
            owned[c.module] = owned.get(c.module, 0) + 1
    return {n: ModuleCoverage(owned.get(n, 0), int(hits[n].sum())) for n in names}
