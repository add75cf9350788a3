"""PREEMPT_RT's allocation cases (rt_rules.allocation_cases) found a window at a time.

An allocation that cannot reclaim, in module code, is a case when spinning locks of
its task and context were held there that the trace saw released in the ordinary
way (a release row; not forced, not handed off).  Which held locks end that way is
known only once each is settled: a lock still held at the window's end keeps its
allocations waiting (``pending``) until the replay settles it, or until the trace
ends.  Repeats of one verdict are counted as the whole pass counts them, the first
(earliest) kept.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from tracedep.analysis import rt_rules
from tracedep.analysis.heldlocks import SPIN_TYPES, irq_context, task_key
from tracedep.analysis.hold_stream import OpenSites
from tracedep.analysis.replay_inputs import GFP_DIRECT_RECLAIM
from tracedep.analysis.row_store import AllocationCase
from tracedep.analysis.rt_rules import CORE_MODULES
from tracedep.analysis.run_symbols import RunSymbols


@dataclass
class _Held:
    """A spinning lock held at an allocation: its acquisition and what the verdict reads."""

    acq: int
    row: int
    cls: int
    ltype: str
    site: tuple[int, int]


@dataclass
class _Case:
    row: int
    site: tuple[int, int]
    gfp: int
    func: str
    held: list[_Held]
    open: set[int]  # acquisitions not settled yet


@dataclass
class AllocationStream:
    symbols: RunSymbols
    found: dict[Hashable, list[int | tuple[tuple[int, int], ...]]] = field(default_factory=dict)
    pending: list[_Case] = field(default_factory=list)
    # the locks not settled yet: one held at a later window's allocation was taken
    # in a window gone by then
    sites: OpenSites = field(default_factory=OpenSites)

    def feed(self, ev: pd.DataFrame, row0: int, cand: pd.DataFrame,
             settled: pd.DataFrame) -> None:
        """A window (``ev``, its first row ``row0`` of the trace), the acquisitions it
        may see (``cand``, column ``acq``: the replay's order) and those settled in
        it, with their final fields."""
        self.sites.add(ev, row0)
        self._settle(settled)
        self._cases(ev, row0, cand, settled)
        # only the locks still open can be held at a later window's allocation
        self.sites.keep(cand["row"].to_numpy(dtype=np.int64)[
            ~np.isin(cand["acq"].to_numpy(), settled["acq"].to_numpy())])

    def _cases(self, ev: pd.DataFrame, row0: int, cand: pd.DataFrame,
               settled: pd.DataFrame) -> None:
        gfp = ev["gfp"].to_numpy()
        cand_rows = np.nonzero((ev["kind"] == "alloc").to_numpy()
                               & ((gfp & GFP_DIRECT_RECLAIM) == 0))[0]
        ips, ts = ev["ip"].to_numpy(), ev["ts_ns"].to_numpy()
        rows = [int(r) for r in cand_rows if ips[r] and self.symbols.module_of(
            int(ips[r]), int(ts[r])) not in (None, *CORE_MODULES)]
        if not rows:
            return
        spin = cand[cand["lock_type"].isin(SPIN_TYPES)]
        done = np.sort(settled["acq"].to_numpy(dtype=np.int64)) if len(settled) else None
        groups: dict[tuple[int, str], _Group] = {}
        pid, cpu = ev["pid"].to_numpy(), ev["cpu"].to_numpy()
        hard, soft, nmi = (ev[c].to_numpy() for c in ("in_hardirq", "in_softirq", "in_nmi"))
        by_task = {k: g for k, g in spin.groupby(["task", "ctx"], sort=False)}
        for r in rows:
            key = (task_key(int(pid[r]), int(cpu[r])),
                   irq_context(bool(hard[r]), bool(soft[r]), bool(nmi[r])))
            grp = groups.get(key)
            if grp is None:
                g = by_task.get(key)
                if g is None:
                    continue
                grp = groups[key] = _Group.of(g, done)
            at = r + row0
            # an open lock may still end in the ordinary way (after the window: after r)
            live = (grp.row < at) & ((grp.rel > at) | ~grp.settled) & (~grp.settled | grp.ordinary)
            if not live.any():
                continue
            held = [_Held(int(a), int(w), int(c), str(lt), self._site(int(w)))
                    for a, w, c, lt in zip(grp.acq[live], grp.row[live], grp.cls[live],
                                           grp.lock_type[live], strict=True)]
            case = _Case(at, (int(ips[r]), self.symbols.epoch(int(ips[r]), int(ts[r]))),
                         int(gfp[r]), str(ev["func"].iat[r]), held,
                         set(grp.acq[live & ~grp.settled].tolist()))
            if case.open:
                self.pending.append(case)
            else:
                self._judge(case)

    def _site(self, row: int) -> tuple[int, int]:
        site = self.sites.at(row)
        if site is None:
            raise KeyError(f"acquire row {row}: not a lock held open since its window")
        return site[0], self.symbols.epoch(*site)

    def _settle(self, settled: pd.DataFrame) -> None:
        if not len(settled) or not self.pending:
            return
        ok = dict(zip(settled["acq"].tolist(), _ordinary(settled).tolist(), strict=True))
        rel = dict(zip(settled["acq"].tolist(), settled["release_row"].tolist(), strict=True))
        left = []
        for case in self.pending:
            for a in [a for a in case.open if a in ok]:
                case.open.discard(a)
                if not ok[a] or rel[a] <= case.row:
                    case.held = [h for h in case.held if h.acq != a]
            if case.open:
                left.append(case)
            else:
                self._judge(case)
        self.pending = left

    def _judge(self, case: _Case) -> None:
        if not case.held:
            return
        held = tuple((h.row, h.cls) for h in case.held)
        key = rt_rules.verdict_key(case.site, case.gfp, case.func,
                                   tuple((h.cls, h.ltype, h.site) for h in case.held))
        seen = self.found.get(key)
        if seen is None:
            self.found[key] = [case.row, held, 0]
        else:
            seen[2] += 1  # type: ignore[operator]
            if case.row < seen[0]:  # type: ignore[operator]
                seen[0], seen[1] = case.row, held

    def finish(self, rest: pd.DataFrame) -> list[AllocationCase]:
        """The cases, once ``rest`` (every acquisition not settled before: how the trace
        left them) settles the pending ones."""
        self._settle(rest)
        for case in self.pending:  # never settled: never released in the ordinary way
            case.held = [h for h in case.held if h.acq not in case.open]
            case.open = set()
            self._judge(case)
        self.pending = []
        return sorted((AllocationCase(r, h, n) for r, h, n in self.found.values()),  # type: ignore[arg-type]
                      key=lambda c: c.row)


@dataclass
class _Group:
    """One (task, context)'s spinning-lock acquisitions a window may see, by row (the
    order the whole pass lists the held ones in), as arrays read once per window."""

    acq: np.ndarray
    row: np.ndarray
    cls: np.ndarray
    lock_type: np.ndarray
    rel: np.ndarray
    settled: np.ndarray  # settled in this window
    ordinary: np.ndarray

    @classmethod
    def of(cls, g: pd.DataFrame, done: np.ndarray | None) -> _Group:
        g = g.sort_values("row", kind="stable")
        acq = g["acq"].to_numpy(dtype=np.int64)
        settled = np.isin(acq, done) if done is not None else np.zeros(len(g), bool)
        return cls(acq, g["row"].to_numpy(dtype=np.int64), g["cls"].to_numpy(),
                   g["lock_type"].astype(str).to_numpy(), g["release_row"].to_numpy(np.int64),
                   settled, _ordinary(g))


def _ordinary(a: pd.DataFrame) -> np.ndarray:
    """Ended by a release the trace saw (not forced, not handed off, not timed)."""
    return ((a["release_row"].to_numpy() >= 0) & (a["forced"].to_numpy() == "")
            & ~a["handed_off"].to_numpy().astype(bool))
