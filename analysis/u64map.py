"""A map from uint64 keys to int64 values, read and written a numpy array at a time.

The streaming analysis keeps its per-address and per-site memos in these: a lookup of
a window's keys is two binary searches, and an insert merges into a small sorted
delta that is folded into the main arrays once it reaches an eighth of them, so a
key costs O(log n) amortized, never a Python iteration.
"""

from __future__ import annotations

import numpy as np

_U64 = np.uint64
_MIN_DELTA = 4096


def _merge(k: np.ndarray, v: np.ndarray, nk: np.ndarray, nv: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique ``k``/``v`` with sorted unique ``nk``/``nv`` put in (they win)."""
    if not len(nk):
        return k, v
    pos = np.searchsorted(k, nk)
    hit = pos < len(k)
    hit[hit] = k[pos[hit]] == nk[hit]
    if hit.any():
        v = v.copy()
        v[pos[hit]] = nv[hit]
    new = ~hit
    if new.any():
        k = np.insert(k, pos[new], nk[new])
        v = np.insert(v, pos[new], nv[new])
    return k, v


def _unique_last(keys: np.ndarray, vals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique keys, each with the value given last for it."""
    keys = np.asarray(keys, dtype=_U64)
    vals = np.asarray(vals, dtype=np.int64)
    if len(keys) > 1 and not (keys[1:] > keys[:-1]).all():
        rk, first = np.unique(keys[::-1], return_index=True)
        return rk, vals[::-1][first]
    return keys, vals


class U64Map:
    """``get(keys)`` and ``put(keys, values)`` over arrays; no key is ever removed
    but by :meth:`filter` (which rewrites the map)."""

    def __init__(self) -> None:
        self._k = np.zeros(0, dtype=_U64)
        self._v = np.zeros(0, dtype=np.int64)
        self._dk = np.zeros(0, dtype=_U64)
        self._dv = np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        self._fold()
        return len(self._k)

    def get(self, keys: np.ndarray, default: int = -1) -> np.ndarray:
        """The value of each key, ``default`` where it has none."""
        keys = np.asarray(keys, dtype=_U64)
        out = np.full(len(keys), default, dtype=np.int64)
        for k, v in ((self._k, self._v), (self._dk, self._dv)):  # the delta wins
            if not len(k):
                continue
            pos = np.searchsorted(k, keys)
            pos[pos == len(k)] = 0
            hit = k[pos] == keys
            out[hit] = v[pos[hit]]
        return out

    def put(self, keys: np.ndarray, values: np.ndarray) -> None:
        """Set each key's value (the last one given, where a key repeats)."""
        nk, nv = _unique_last(keys, values)
        self._dk, self._dv = _merge(self._dk, self._dv, nk, nv)
        if len(self._dk) > max(_MIN_DELTA, len(self._k) // 8):
            self._fold()

    def items(self) -> tuple[np.ndarray, np.ndarray]:
        """Every key (sorted) and its value."""
        self._fold()
        return self._k, self._v

    def filter(self, keep: np.ndarray, keys: np.ndarray | None = None,
               values: np.ndarray | None = None) -> None:
        """Keep the entries where ``keep`` (over :meth:`items`) is true, with new
        ``keys`` (sorted the same way, when given) and ``values``."""
        k, v = self.items()
        k = k[keep] if keys is None else np.asarray(keys, dtype=_U64)[keep]
        v = v[keep] if values is None else np.asarray(values, dtype=np.int64)[keep]
        if len(k) > 1 and not (k[1:] > k[:-1]).all():
            o = np.argsort(k, kind="stable")
            k, v = k[o], v[o]
        self._k, self._v = k, v

    def _fold(self) -> None:
        if len(self._dk):
            self._k, self._v = _merge(self._k, self._v, self._dk, self._dv)
            self._dk = np.zeros(0, dtype=_U64)
            self._dv = np.zeros(0, dtype=np.int64)
