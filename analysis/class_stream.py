"""Lock classes for a trace fed a window at a time, in time order, in bounded memory.

:class:`ClassEngine` gives every lock row the class ``classes.assign`` gives it over the
whole trace, keeping only causal state (analysis.heap_state: the allocation latest
over each address, freed or not; analysis.init_state: each initialized address's
latest initializer; a memo of each lock address's symbol and of each (allocation,
offset)'s class) and a summary for the table (analysis.class_bases, class_names):
what it keeps grows with live objects, initialized and locked addresses, classes and
call sites, not with events.  Within a window the work is numpy over the window's
rows; a Python iteration runs per initializer row, per new (allocation, lock offset)
and per class or new address, never per lock event.

Windows: ``feed(events, row0)`` with the rows of the trace's events frame ``row0`` …,
in time order, and no time stamp split between two windows (an allocation at the
very time stamp of a lock event counts for it, whichever row comes first):
:func:`tracer.window_cuts.whole_timestamps` re-cuts a stream of windows that way.

Two passes (offline, exact).  Three things classes.assign decides over the whole
trace: the instance classes (a union-find over every (address, call site) pair of
the rows nothing else classed), which class has both spinning and sleeping rows, and
lockdep's name for a row before its address's first named row.  So::

    first = ClassEngine(symbols, namer)
    for w in windows: first.feed(w.events, w.row0)   # provisional ids
    plan = first.finish()                            # the table, as assign makes it
    main = ClassEngine(symbols, namer, plan)
    for w in windows: ids = main.feed(w.events, w.row0)   # final ids, row by row

The first pass is the whole causal engine, not a small collector: whether a row
needs an instance class depends on the heap and initializers before it.  A caller
that holds the first pass's ids instead of feeding twice translates them with
``plan.resolve(ids, addresses)`` (classes.assign does).

Online (one pass): the first pass's ids, ``plan.remap`` once the stream ends.  Rows
with one id share a final class; what differs from assign during the stream is that
instance pairs, a class's spinning rows and its lockdep names are separate ids until
``finish`` merges them, and a row before its address's first lockdep name keeps no
name: ``remap`` gives it the class assign gives the address's unnamed rows, -1 where
assign has none (``plan.resolve`` with the address gives assign's).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from tracedep.analysis.class_bases import Bases
from tracedep.analysis.class_model import ClassNamer, LockClass
from tracedep.analysis.class_names import LockdepNames
from tracedep.analysis.class_table import NAME_BITS, Collected, Table, build
from tracedep.analysis.class_window import LockRows, StreamState, classify, compact
from tracedep.analysis.heap_state import HeapState
from tracedep.analysis.init_state import Candidates, InitState, TypeCodes
from tracedep.analysis.run_symbols import RunSymbols
from tracedep.analysis.u64map import U64Map
from tracedep.analysis.window_cols import Cols

_NAME_MASK = np.uint64((1 << NAME_BITS) - 1)


@dataclass
class ClassPlan:
    """What the first pass learnt: the table, and how its keys become the table's ids."""

    table: list[LockClass]
    keys: Table
    prov: np.ndarray  # provisional id -> its key (slot << NAME_BITS | name)
    remap: np.ndarray  # provisional id -> final class id (-1: see the module docstring)
    first_names: U64Map  # address -> the name id of its first lockdep-named row
    names: list[str]
    bases: Bases

    def resolve(self, prov: np.ndarray, addr: np.ndarray) -> np.ndarray:
        """Final ids of first-pass ids (-1: not a lock row), exact: a row with no
        lockdep name yet takes its address's first."""
        out = np.full(len(prov), -1, dtype=np.int64)
        ok = prov >= 0
        key = self.prov[prov[ok]]
        pend = (key & _NAME_MASK) == 0
        fn = self.first_names.get(addr[ok][pend].astype(np.uint64), 0)
        kp = key[pend]
        kp[fn > 0] = (kp[fn > 0] & ~_NAME_MASK) | fn[fn > 0].astype(np.uint64)
        key[pend] = kp
        out[ok] = self.keys.lookup(key)
        return out


class ClassEngine:
    def __init__(self, symbols: RunSymbols, namer: ClassNamer | None = None,
                 plan: ClassPlan | None = None) -> None:
        self.symbols = symbols
        self.plan = plan
        cands = Candidates()
        types = TypeCodes()
        if plan is None:
            bases = Bases(cands)
            self.names = LockdepNames()
        else:
            bases = plan.bases.frozen_for(cands)
            self.names = LockdepNames(plan.first_names, plan.names)
        self.st = StreamState(symbols, namer, cands, types, HeapState(),
                              InitState(symbols, cands, types), bases, _spans(symbols),
                              U64Map(), U64Map())
        self.prov = U64Map()  # first pass: key -> provisional id
        self.prov_keys: list[np.ndarray] = []
        self.n_prov = 0
        self.last_ts: int | None = None
        self.fed = 0

    def feed(self, events: pd.DataFrame, row0: int, rows: np.ndarray | None = None
             ) -> np.ndarray:
        """A class id for each row of the window (-1: not a lock row): provisional
        in a first pass (``finish().remap``), final with a plan.  ``rows``: the
        window's lock rows (default: its ``lock_acquire`` rows)."""
        out = np.full(len(events), -1, dtype=np.int64)
        if not len(events):
            return out
        cols = Cols(events)
        ts = cols.num("ts_ns").astype(np.int64)
        self._check_order(ts)
        if rows is None:
            rows = np.nonzero(cols.is_("kind", "lock_acquire"))[0]
        lr = LockRows.of(cols, rows, ts, row0, self.st.types)
        slot = classify(self.st, cols, ts, row0, lr)
        if len(rows):
            name = self.names.ids_of(cols, rows)
            key = self.names.feed(lr.addr, lr.pos, name, slot, lr.ua, lr.inv)
            out[rows] = self._ids(key)
        self.fed += len(events)
        return out

    def _check_order(self, ts: np.ndarray) -> None:
        if (len(ts) > 1 and not (ts[1:] >= ts[:-1]).all()) or (
                self.last_ts is not None and int(ts[0]) <= self.last_ts):
            raise ValueError("windows must come in time order, no time stamp split "
                             "between two (tracer.window_cuts.whole_timestamps)")
        self.last_ts = int(ts[-1])

    def _ids(self, key: np.ndarray) -> np.ndarray:
        if self.plan is not None:
            return self.plan.keys.lookup(key)
        got = self.prov.get(key)
        new = got < 0
        if new.any():
            nk = np.unique(key[new])
            self.prov.put(nk, np.arange(self.n_prov, self.n_prov + len(nk)))
            self.prov_keys.append(nk)
            self.n_prov += len(nk)
            got = self.prov.get(key)
        return got

    def finish(self) -> ClassPlan:
        """The class table (classes.assign's, name for name) and the remap of the
        provisional ids; the plan for a second pass."""
        if self.plan is not None:
            return self.plan
        k, pos = self.names.named.items()
        bases = self.st.bases
        p = bases.pairs
        col = Collected(bases.met, p["base"], p["addr"], p["ip"], p["count"], p["ts"],
                        np.nonzero(self.names.used)[0], k, pos,
                        self.names.unnamed_slots(), self.names.names)
        table = build(col, self.symbols, bases.n)
        prov = (np.concatenate(self.prov_keys) if self.prov_keys
                else np.zeros(0, dtype=np.uint64))
        return ClassPlan(table.classes, table, prov, table.lookup(prov), self.names.first,
                         self.names.names, bases)

    def compact(self) -> None:
        """Forget now what can no longer matter (the stream does it as records pile up)."""
        compact(self.st)

    def state_size(self) -> dict[str, int]:
        """Entries in each map the engine keeps (against ``events``: rows fed)."""
        st = self.st
        h = st.heap
        return {"events": self.fed, "heap_records": h.n, "heap_segments": len(h.s_start),
                "pending_frees": len(h.pend_head), "init_addresses": len(st.inits),
                "static_memo": len(st.static), "heap_memo": len(st.heap_memo),
                "candidates": len(st.cands.items), "provisional_ids": self.n_prov,
                **st.bases.size(), **self.names.size()}

def _spans(symbols: RunSymbols) -> tuple[np.ndarray, np.ndarray]:
    """Address ranges where a symbol may be (the kernel's, the modules'), merged: an
    address outside them has none at any time, so needs no memo."""
    spans = [tuple(getattr(symbols, "kernel_span", (0, 0)))]
    spans += [(m.lo, m.hi) for m in getattr(symbols, "modules", [])]
    if not hasattr(symbols, "kernel_span"):
        spans = [(0, 1 << 64)]
    spans = sorted((int(lo), int(hi)) for lo, hi in spans if hi > lo)
    merged: list[list[int]] = []
    for lo, hi in spans:
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    lo_a = np.array([m[0] for m in merged], dtype=np.uint64)
    hi_a = np.array([min(m[1], (1 << 64) - 1) for m in merged], dtype=np.uint64)
    return lo_a, hi_a
