"""Per lock class: acquisitions, hold and wait times, contexts (``ClassStats`` of
analysis.json), from the replay's acquisitions as they come.

:class:`StatsAcc` folds frames of acquisitions (the whole table at once, or a
stream's drained windows: analysis.stream_pipeline) and gives the same statistics
either way.  Counts, contexts, means, maxima and the log2 histograms are exact.  The
median and 99th percentile need every value: a class keeps its values while it has
at most :data:`EXACT_VALUES` of a kind (np.percentile over them, as before), and a
class with more keeps a log-linear histogram instead (:data:`SUB_BUCKETS` buckets
per power of two: a percentile within 1/SUB_BUCKETS of the true value, ~0.8 %), so
what a class keeps is bounded however long the trace.  Which classes are approximate
depends on their counts only, never on how the acquisitions were cut into frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from tracedep.analysis.acquisitions import text_codes
from tracedep.analysis.classes import LockClass
from tracedep.analysis.findings import ClassStats
from tracedep.tracer.probes import SLEEPING_LOCK_TYPES

BUCKETS_NS = [1_000 * 2**i for i in range(0, 24)]  # 1 µs … ~8 s
_BUCKETS = np.array(BUCKETS_NS)
EXACT_VALUES = 1 << 12  # per class and kind (hold, wait): exact percentiles up to this
SUB_BUCKETS = 128  # per power of two, beyond EXACT_VALUES
_SUB_BITS = 7
_FINE = (64 - _SUB_BITS + 1) * SUB_BUCKETS  # log-linear buckets of a non-negative int64


def _fine_index(v: np.ndarray) -> np.ndarray:
    """The log-linear bucket of each value (negative ones: 0's): values below
    SUB_BUCKETS have one each; above, SUB_BUCKETS per power of two."""
    v = np.maximum(v.astype(np.int64), 0)
    e = np.zeros(len(v), dtype=np.int64)
    big = v >= SUB_BUCKETS
    e[big] = np.floor(np.log2(v[big].astype(np.float64))).astype(np.int64) - _SUB_BITS + 1
    # float log2 may round up at a power of two: the shift must leave 7 bits + the top one
    over = big & ((v >> np.maximum(e, 0)) < SUB_BUCKETS)
    e[over] -= 1
    return np.where(big, (e + 1) * SUB_BUCKETS + ((v >> e) - SUB_BUCKETS), v)


def _fine_value(i: int) -> float:
    """The middle of log-linear bucket ``i``."""
    if i < SUB_BUCKETS:
        return float(i)
    e = i // SUB_BUCKETS - 1
    lo = (SUB_BUCKETS + i % SUB_BUCKETS) << e
    return lo + ((1 << e) - 1) / 2


@dataclass
class _Values:
    """One kind of time (hold or wait) of one class."""

    acq: list[np.ndarray] = field(default_factory=list)  # exact: values by acquisition
    val: list[np.ndarray] = field(default_factory=list)
    n: int = 0
    total: int = 0
    top: int | None = None
    log2: np.ndarray = field(default_factory=lambda: np.zeros(len(BUCKETS_NS) + 1, np.int64))
    fine: np.ndarray | None = None  # log-linear counts, once past EXACT_VALUES

    def add(self, acq: np.ndarray, val: np.ndarray) -> None:
        if not len(val):
            return
        val = val.astype(np.int64)
        self.n += len(val)
        self.total += int(val.sum(dtype=np.int64))
        m = int(val.max())
        self.top = m if self.top is None else max(self.top, m)
        self.log2 += np.bincount(np.searchsorted(_BUCKETS, val, side="right"),
                                 minlength=len(BUCKETS_NS) + 1)
        if self.fine is None:
            self.acq.append(acq.astype(np.int64))
            self.val.append(val)
            if self.n <= EXACT_VALUES:
                return
            val = np.concatenate(self.val)
            self.acq, self.val = [], []
            self.fine = np.zeros(_FINE, np.int64)
        self.fine += np.bincount(_fine_index(val), minlength=_FINE)

    def summary(self) -> dict[str, float]:
        if not self.n:
            return {}
        if self.fine is None:
            v = self.exact()
            return {"mean": float(v.mean()), "p50": float(np.percentile(v, 50)),
                    "p99": float(np.percentile(v, 99)), "max": float(v.max())}
        return {"mean": self.total / self.n, "p50": self._percentile(50),
                "p99": self._percentile(99), "max": float(self.top or 0)}

    def exact(self) -> np.ndarray:
        """The values in acquisition order (the order the whole table has them)."""
        acq = np.concatenate(self.acq)
        return np.concatenate(self.val)[np.argsort(acq, kind="stable")]

    def _percentile(self, q: float) -> float:
        """np.percentile's linear interpolation between the order statistics, each
        taken as its bucket's middle."""
        assert self.fine is not None
        cum = np.cumsum(self.fine)
        rank = q / 100 * (self.n - 1)
        lo, hi = int(np.floor(rank)), int(np.ceil(rank))
        a, b = (_fine_value(int(np.searchsorted(cum, k, side="right"))) for k in (lo, hi))
        return a + (b - a) * (rank - lo)

    def hist(self) -> dict[str, int]:
        if not self.n:
            return {}
        present = np.nonzero(self.log2)[0]
        out: dict[str, int] = {}
        for i in range(int(present[0]), int(present[-1]) + 1):
            lo = 0 if i == 0 else BUCKETS_NS[i - 1]
            out[f"{_fmt_ns(lo)}-{_fmt_ns(BUCKETS_NS[i]) if i < len(BUCKETS_NS) else 'inf'}"] = \
                int(self.log2[i])
        return out


def _fmt_ns(ns: int) -> str:
    if ns >= 1_000_000_000:
        return f"{ns / 1e9:g}s"
    if ns >= 1_000_000:
        return f"{ns / 1e6:g}ms"
    if ns >= 1_000:
        return f"{ns / 1e3:g}us"
    return f"{ns}ns"


@dataclass
class _Class:
    acquisitions: int = 0
    first: tuple[int, str] | None = None  # (acquisition, lock type) of its first
    contexts: set[str] = field(default_factory=set)
    hold: _Values = field(default_factory=_Values)
    wait: _Values = field(default_factory=_Values)


@dataclass
class StatsAcc:
    table: list[LockClass]
    by_class: dict[int, _Class] = field(default_factory=dict)

    def add(self, a: pd.DataFrame) -> None:
        """Acquisitions (the replay's columns; ``acq`` their index, else the frame's
        position is): any subset, in any order, each once."""
        if a.empty:
            return
        acq = (a["acq"].to_numpy(dtype=np.int64) if "acq" in a.columns
               else np.arange(len(a), dtype=np.int64))
        cls = a["cls"].to_numpy(dtype=np.int64)
        order = np.lexsort((acq, cls))
        cls, acq = cls[order], acq[order]
        release = a["ts_release"].to_numpy(dtype=np.int64)[order]
        acquired = a["ts_acquired"].to_numpy(dtype=np.int64)[order]
        waited = acquired - a["ts_acquire"].to_numpy(dtype=np.int64)[order]
        lt_names, lt_codes = text_codes(a["lock_type"])
        ctx_names, ctx_codes = text_codes(a["ctx"])
        lt_codes, ctx_codes = lt_codes[order], ctx_codes[order]
        uniq, starts = np.unique(cls, return_index=True)
        ends = [*starts[1:].tolist(), len(cls)]
        for ci, lo, hi in zip(uniq.tolist(), starts.tolist(), ends, strict=True):
            if ci < 0:
                continue
            c = self.by_class.setdefault(ci, _Class())
            c.acquisitions += hi - lo
            first = (int(acq[lo]), str(lt_names[lt_codes[lo]]))
            if c.first is None or first < c.first:
                c.first = first
            c.contexts.update(str(ctx_names[k]) for k in np.unique(ctx_codes[lo:hi]).tolist())
            rel = release[lo:hi] >= 0
            c.hold.add(acq[lo:hi][rel], (release[lo:hi] - acquired[lo:hi])[rel])
            c.wait.add(acq[lo:hi], waited[lo:hi])

    def approximate(self) -> int:
        """Classes whose percentiles come from the log-linear histogram."""
        return sum(1 for c in self.by_class.values()
                   if c.hold.fine is not None or (c.first is not None and c.first[1] in
                                                  SLEEPING_LOCK_TYPES and c.wait.fine is not None))

    def finish(self, usage: dict[int, dict[str, int]] | None = None) -> list[ClassStats]:
        out: list[ClassStats] = []
        for ci in sorted(self.by_class):
            c = self.by_class[ci]
            lc = self.table[ci]
            lt = c.first[1] if c.first is not None else ""
            wait = c.wait if lt in SLEEPING_LOCK_TYPES else _Values()
            out.append(ClassStats(
                lock_class=lc.name, lock_type=lt, driver=lc.module,
                acquisitions=c.acquisitions, hold_ns=c.hold.summary(), hold_hist=c.hold.hist(),
                wait_ns=wait.summary(), wait_hist=wait.hist(),
                contexts=sorted(c.contexts | _usage_words((usage or {}).get(ci, {})))))
        return out


def class_stats(acqs: pd.DataFrame, table: list[LockClass],
                usage: dict[int, dict[str, int]] | None = None) -> list[ClassStats]:
    """The statistics of the whole acquisitions table."""
    acc = StatsAcc(table)
    acc.add(acqs)
    return acc.finish(usage)


def _usage_words(bits: dict[str, int]) -> set[str]:
    """lockdep's usage bits as context words: taken with hardirqs/softirqs enabled."""
    words = set()
    if any(b.startswith("HARDIRQ-ON") for b in bits):
        words.add("hardirq-on")
    if any(b.startswith("SOFTIRQ-ON") for b in bits):
        words.add("softirq-on")
    return words
