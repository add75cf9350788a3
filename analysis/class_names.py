"""lockdep's class names in a stream of windows (a kernel with lockdep names its locks).

A lock row takes the name of the nearest named row at or before it at its address
(row order), else the first named row at its address, else none (classes.assign).  The
first is causal: each address keeps the last name seen.  The second is not: a row
before its address's first name takes a name seen later.  So each row's key is
``slot << NAME_BITS | name`` with the name known so far (0: none yet, "pending"), and

* a first pass remembers the pending rows per (address, slot) with their first row,
  and when the address's first name arrives turns them into that name's key: the
  table sees every row as classes.assign does;
* a second pass (``first`` given: the first pass's first name of each address) gives
  a pending row that name at once.

Kept: the last and first name of each named address, the pending (address, slot)
pairs of addresses not named yet, and per key its first row.
"""

from __future__ import annotations

import numpy as np

from tracedep.analysis.class_table import NAME_BITS
from tracedep.analysis.u64map import U64Map
from tracedep.analysis.window_cols import Cols, TextIds

_NB = np.uint64(NAME_BITS)


class LockdepNames:
    def __init__(self, first: U64Map | None = None, names: list[str] | None = None) -> None:
        self.text = TextIds(names or [""])
        self.names = self.text.names
        self.frozen = first is not None
        self.first = first if first is not None else U64Map()
        self.last = U64Map()
        self.named = U64Map()  # key -> its first row
        self.used = np.zeros(1024, dtype=bool)  # slots with any row
        self._pend: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._pend_n = 0
        self._pend_after_dedup = 0

    def ids_of(self, cols: Cols, rows: np.ndarray) -> np.ndarray:
        if not cols.has("lock_name"):
            return np.zeros(len(rows), dtype=np.int64)
        return self.text.of(cols, "lock_name", rows)

    def feed(self, a: np.ndarray, pos: np.ndarray, name: np.ndarray, slot: np.ndarray,
             ua: np.ndarray, inv: np.ndarray) -> np.ndarray:
        """Each lock row's key (rows in row order; ``ua``, ``inv``: their distinct
        addresses and which each is): its slot and the name known for it (first
        pass: 0 while the address has none; second pass: lockdep's)."""
        before = self.last.get(ua, 0)
        has = np.zeros(len(ua), dtype=bool)
        named = name > 0
        if named.any():
            order = np.argsort(inv, kind="stable")
            g = inv[order]
            start = np.searchsorted(g, g, side="left")
            named_at = np.where(named[order], np.arange(len(order)), -1)
            last = np.maximum.accumulate(named_at)
            mine = last >= start
            known = np.empty(len(order), dtype=np.int64)
            known[mine] = name[order][last[mine]]
            known[~mine] = before[g[~mine]]
            got = np.empty(len(a), dtype=np.int64)
            got[order] = known
            # the address's names for later windows
            has[inv[named]] = True
            ends = np.append(np.nonzero(np.diff(g))[0], len(g) - 1)
            self.last.put(ua[has], known[ends][has])
        else:
            got = before[inv]
        pending = got == 0
        if self.frozen:
            got[pending] = self.first.get(a[pending], 0)
        else:
            self._collect(a, pos, slot, got, ua, inv, has)
        return (slot.astype(np.uint64) << _NB) | got.astype(np.uint64)

    def _collect(self, a: np.ndarray, pos: np.ndarray, slot: np.ndarray, got: np.ndarray,
                 ua: np.ndarray, inv: np.ndarray, has: np.ndarray) -> None:
        """First pass: the slots used, each named key's first row, the pending rows."""
        if slot.max(initial=-1) >= len(self.used):
            grown = np.zeros(2 * int(slot.max()) + 2, dtype=bool)
            grown[:len(self.used)] = self.used
            self.used = grown
        self.used[slot] = True
        fresh = has.copy()
        fresh[has] = self.first.get(ua[has], 0) == 0  # first named in this window
        named = got > 0
        if fresh.any():
            sel = np.nonzero(fresh[inv] & named)[0]  # rows in row order
            firsts = np.unique(inv[sel], return_index=True)[1]
            self.first.put(ua[inv[sel[firsts]]], got[sel[firsts]])
        self._name_keys(slot[named], got[named], pos[named])
        pend = ~named
        pa, ps, pp, pg = a[pend], slot[pend], pos[pend], inv[pend]
        if fresh.any():
            # pending rows of earlier windows and of this one, at a newly named address
            self._fold_pending()
            sa, ss, sp = (np.concatenate([x[i] for x in self._pend] + [y])
                          for i, y in enumerate((pa, ps, pp)))
            hit = np.isin(sa, ua[fresh])
            fn = self.first.get(sa[hit], 0)
            self._name_keys(ss[hit], fn, sp[hit])
            self._pend = [(sa[~hit], ss[~hit], sp[~hit])]
            self._pend_n = int((~hit).sum())
        elif len(pa):
            # one entry per (address, slot) of the window: its first row
            k = pg * (int(ps.max()) + 1) + ps
            first = np.unique(k, return_index=True)[1]
            self._pend.append((pa[first], ps[first], pp[first]))
            self._pend_n += len(first)
            if self._pend_n > 2 * self._pend_after_dedup + 65536:
                self._fold_pending()

    def _name_keys(self, slot: np.ndarray, name: np.ndarray, pos: np.ndarray) -> None:
        if not len(slot):
            return
        k = (slot.astype(np.uint64) << _NB) | name.astype(np.uint64)
        o = np.lexsort((pos, k))
        k, pos = k[o], pos[o]
        first = np.ones(len(k), dtype=bool)
        first[1:] = k[1:] != k[:-1]
        k, pos = k[first], pos[first]
        old = self.named.get(k)
        self.named.put(k, np.where((old >= 0) & (old < pos), old, pos))

    def _fold_pending(self) -> None:
        if len(self._pend) > 1:
            self._pend = [_dedup(*(np.concatenate([x[i] for x in self._pend])
                                   for i in range(3)))]
        self._pend_n = self._pend_after_dedup = len(self._pend[0][0]) if self._pend else 0

    def unnamed_slots(self) -> np.ndarray:
        self._fold_pending()
        return np.unique(self._pend[0][1]) if self._pend else np.zeros(0, dtype=np.int64)

    def size(self) -> dict[str, int]:
        self._fold_pending()
        return {"named_addresses": len(self.last), "pending_pairs": self._pend_n,
                "name_keys": len(self.named), "names": len(self.names)}


def _dedup(a: np.ndarray, slot: np.ndarray, pos: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One entry per (address, slot): its first row."""
    o = np.lexsort((pos, slot, a))
    a, slot, pos = a[o], slot[o], pos[o]
    first = np.ones(len(a), dtype=bool)
    first[1:] = (a[1:] != a[:-1]) | (slot[1:] != slot[:-1])
    return a[first], slot[first], pos[first]
