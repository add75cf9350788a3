"""Base ids: what the stream calls a lock row's class before the table exists.

A base is either a class some answer gave (a symbol's, an initializer's, an
allocation's: one base per class key) or an instance pair (lock address, call site)
of a row no answer classed; analysis.class_table turns bases into the table's ids when
the stream ends.  A base slot is ``base << 1 | spinning``: whether a class holds
spinning and sleeping rows is only known at the end, so the two kinds of row keep
apart until then.

Kept: one entry per class key, per call site, per address with an unclassed row and
per (address, call site) pair of those rows; never per event.
"""

from __future__ import annotations

import copy

import numpy as np

from tracedep.analysis.class_table import Met
from tracedep.analysis.init_state import Candidates
from tracedep.analysis.u64map import U64Map

SITE_BITS = 24


class _Grow:
    """Growable int64/uint64 columns."""

    def __init__(self, **dtypes: type) -> None:
        self.n = 0
        self.cols: dict[str, np.ndarray] = {k: np.zeros(256, dtype=v)
                                            for k, v in dtypes.items()}

    def extend(self, k: int) -> np.ndarray:
        while self.n + k > len(next(iter(self.cols.values()))):
            self.cols = {c: np.concatenate([v, np.zeros_like(v)]) for c, v in self.cols.items()}
        ids = np.arange(self.n, self.n + k)
        self.n += k
        return ids

    def __getitem__(self, k: str) -> np.ndarray:
        return self.cols[k][:self.n]


class Bases:
    def __init__(self, cands: Candidates) -> None:
        self.cands = cands
        self.n = 0
        self.frozen = False  # a second pass: every base exists already
        self.key_base: dict[str, int] = {}
        self.met: dict[int, Met] = {}
        self._cand_base = np.zeros(0, dtype=np.int64)
        self._ids = {"site": U64Map(), "addr": U64Map(), "pair": U64Map()}
        self._counts = {"site": 0, "addr": 0}
        self.pairs = _Grow(base=np.int64, addr=np.uint64, ip=np.uint64, count=np.int64,
                           ts=np.int64)

    def frozen_for(self, cands: Candidates) -> Bases:
        """These bases for a second pass with its own candidates (which find their
        bases by key); nothing new may appear."""
        out = copy.copy(self)
        out.cands = cands
        out._cand_base = np.zeros(0, dtype=np.int64)
        out.frozen = True
        return out

    def of_cands(self, cand: np.ndarray) -> np.ndarray:
        """The base of each candidate class (-1 for -1: no class)."""
        have = len(self._cand_base)
        if have < len(self.cands.items):
            more = [self._by_key(c.key) for c in self.cands.items[have:]]
            self._cand_base = np.concatenate([self._cand_base,
                                              np.array(more, dtype=np.int64)])
        out = np.full(len(cand), -1, dtype=np.int64)
        ok = cand >= 0
        out[ok] = self._cand_base[cand[ok]]
        return out

    def _by_key(self, key: str) -> int:
        b = self.key_base.get(key)
        if b is None:
            if self.frozen:
                raise ValueError(f"class {key!r} unknown to the first pass: "
                                 "the passes were not fed the same events")
            b = self.key_base[key] = self.n
            self.n += 1
        return b

    def meet(self, cand: np.ndarray, where: tuple[np.ndarray, ...]) -> None:
        """Note where classes.assign would meet each candidate (``where``: columns
        address, step, k1, k2, k3), keeping the least place of each base."""
        if self.frozen or not len(cand):
            return
        order = np.lexsort(tuple(reversed(where)) + (cand,))
        first = np.ones(len(order), dtype=bool)
        first[1:] = cand[order][1:] != cand[order][:-1]
        bases = self.of_cands(cand)
        for i in order[first].tolist():
            b = int(bases[i])
            at = (int(where[0][i]), int(where[1][i]), int(where[2][i]), int(where[3][i]),
                  int(where[4][i]))
            m = self.met.get(b)
            if m is None or at < m.where:
                self.met[b] = Met(at, self.cands.items[int(cand[i])])

    def of_pairs(self, addr: np.ndarray, ip: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """The base of each (address, call site) pair of unclassed rows, in row order
        (``ts``: their time stamps, for a new pair's first)."""
        sid = self._number("site", ip)
        aid = self._number("addr", addr)
        key = (aid.astype(np.uint64) << np.uint64(SITE_BITS)) | sid.astype(np.uint64)
        m = self._ids["pair"]
        b = m.get(key)
        new = b < 0
        if new.any():
            if self.frozen:
                raise ValueError("an instance pair unknown to the first pass")
            nk, first = np.unique(key[new], return_index=True)
            rows = np.nonzero(new)[0][first]
            ids = self.pairs.extend(len(nk))
            nb = np.arange(self.n, self.n + len(nk))
            self.n += len(nk)
            p = self.pairs.cols
            p["base"][ids], p["addr"][ids], p["ip"][ids] = nb, addr[rows], ip[rows]
            p["ts"][ids] = ts[rows]
            m.put(nk, ids)
            b = m.get(key)
        if not self.frozen:
            np.add.at(self.pairs.cols["count"], b, 1)
        return self.pairs.cols["base"][b]

    def _number(self, what: str, values: np.ndarray) -> np.ndarray:
        m = self._ids[what]
        got = m.get(values)
        new = got < 0
        if new.any():
            nv = np.unique(values[new])
            start = self._counts[what]
            self._counts[what] = start + len(nv)
            if self._counts[what] >= (1 << SITE_BITS) and what == "site":
                raise ValueError("more call sites than a pair key holds")
            m.put(nv, np.arange(start, start + len(nv)))
            got = m.get(values)
        return got

    def size(self) -> dict[str, int]:
        return {"class_keys": len(self.key_base), "pairs": self.pairs.n,
                "sites": self._counts["site"], "pair_addresses": self._counts["addr"]}
