"""The rows the rules read, kept apart from the trace and numbered anew.

The rules (analysis.sleep_rules, order_rules, the IRQ and recursion rules of
analysis.rules, analysis.rt_rules) read the trace only at rows something before
them named: each edge's two witnesses (lock dependencies and waits), each usage
bit's first row, each recursion's two rows, each sleep in atomic context and the
acquisitions it held, each PREEMPT_RT allocation case and the locks it held, and
the gaps (for the near-gap notes).  A :class:`RowStore` keeps those rows and
nothing else, in trace order and numbered from 0; :func:`renumber` gives what named
them in that numbering.  The rules then run on the store exactly as on the whole
frame, and the frame is needed no longer: a few thousand rows where the trace has
tens of millions (DESIGN "Memory": the streaming analysis fills a store a window at
a time).

The store's :class:`Replay` carries what the rules read, and not the rest: the
acquisitions no sleep held, and the forced and IRQ-ended releases, belong to the
stages that read them before the store is made (the class statistics, the wait
graph, the health's forced releases); they are empty there, never renumbered.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from tracedep.analysis.findings import Frame
from tracedep.analysis.replay_types import EdgeAcc, Recursion, Replay

Edges = dict[tuple[int, int], list[EdgeAcc]]


@dataclass(frozen=True)
class AllocationCase:
    """An allocation that cannot reclaim, in a module, while spinning locks of its own
    task and context were held (analysis.rt_rules judges whether one was a
    raw_spinlock_t); one case stands for ``repeats`` more that its verdict is the
    verdict of (the same call site, flags and held locks' sites and classes)."""

    row: int
    held: tuple[tuple[int, int], ...]  # (acquire row, class) of each, in acquisition order
    repeats: int = 0


@dataclass
class RowStore:
    """Rows of a trace's events frame: ``events`` (the frame's columns, numbered 0 …)
    holds the rows ``rows`` (sorted, distinct) of the whole frame."""

    events: pd.DataFrame
    rows: np.ndarray

    @classmethod
    def keep(cls, events: pd.DataFrame, rows: np.ndarray) -> RowStore:
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        if len(rows) and (rows[0] < 0 or rows[-1] >= len(events)):
            raise IndexError(f"row {int(rows[0] if rows[0] < 0 else rows[-1])} is not one of "
                             f"the frame's {len(events)}")
        return cls(events.take(rows).reset_index(drop=True), rows)

    def at(self, rows: np.ndarray | list[int]) -> np.ndarray:
        """The store's numbers of whole-trace ``rows``; every one must be kept (a rule
        that reads a row nobody named would read another row here: it must fail)."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return np.zeros(0, dtype=np.int64)
        pos = np.searchsorted(self.rows, rows)
        ok = pos < len(self.rows)
        ok[ok] = self.rows[pos[ok]] == rows[ok]
        if not ok.all():
            raise KeyError(f"row {int(rows[~ok][0])} is not in the store")
        return pos.astype(np.int64)

    def pos(self, r: int) -> int:
        return int(self.at([r])[0])


def held_acquisitions(rep: Replay) -> np.ndarray:
    """The acquisitions the rules read (those a sleep held), sorted."""
    ids: list[int] = []
    for s in rep.sleeps:
        ids += s.held
        ids += s.all_held
    return np.unique(np.asarray(ids, dtype=np.int64))


def named_rows(rep: Replay, wait_edges: Edges, gap_rows: np.ndarray,
               cases: Iterable[AllocationCase] = ()) -> np.ndarray:
    """Every row the rules may read (module docstring)."""
    parts: list[np.ndarray] = [np.asarray(gap_rows, dtype=np.int64)]
    rows: list[int] = []
    for edges in (rep.edges, wait_edges):
        for accs in edges.values():
            for acc in accs:
                rows += (acc.row, acc.held_row)
    for bits in rep.usage.values():
        rows += bits.values()
    for rec in rep.recursions:
        rows += (rec.row, rec.held_row)
    rows += (s.row for s in rep.sleeps)
    for case in cases:
        rows.append(case.row)
        rows += (r for r, _ in case.held)
    parts.append(np.asarray(rows, dtype=np.int64))
    held = acquisition_positions(rep.acquisitions, held_acquisitions(rep))
    if len(held):
        for col in ("row", "release_row"):
            parts.append(rep.acquisitions[col].to_numpy(dtype=np.int64)[held])
    out = np.unique(np.concatenate(parts))
    return out[out >= 0]


def acquisition_positions(acqs: pd.DataFrame, ids: np.ndarray) -> np.ndarray:
    """Where acquisitions ``ids`` (the replay's indices) are in ``acqs``: the whole
    table, or the few a stream kept (column ``acq``, ascending)."""
    if "acq" not in acqs.columns:
        return ids
    have = acqs["acq"].to_numpy(dtype=np.int64)
    pos = np.searchsorted(have, ids)
    ok = pos < len(have)
    ok[ok] = have[pos[ok]] == ids[ok]
    if not ok.all():
        raise KeyError(f"acquisition {int(ids[~ok][0])} was not kept")
    return pos.astype(np.int64)


@dataclass
class Renumbered:
    """What named the rows, in the store's numbering."""

    replay: Replay
    wait_edges: Edges
    cases: list[AllocationCase]
    text_sites: dict[int, Frame]


def renumber(store: RowStore, rep: Replay, wait_edges: Edges,
             cases: Iterable[AllocationCase] = (),
             text_sites: dict[int, Frame] | None = None) -> Renumbered:
    """``rep``, ``wait_edges``, ``cases`` and ``text_sites`` (rows of the whole frame)
    in the numbering of ``store``, which must hold every row they name."""
    at = store.pos
    held = held_acquisitions(rep)
    new_acq = {int(a): i for i, a in enumerate(held.tolist())}
    acqs = rep.acquisitions.iloc[acquisition_positions(rep.acquisitions, held)].reset_index(
        drop=True).drop(columns=["acq"], errors="ignore")
    if len(acqs):
        acqs["row"] = store.at(acqs["row"].to_numpy(dtype=np.int64))
        rel = acqs["release_row"].to_numpy(dtype=np.int64).copy()
        done = rel >= 0
        rel[done] = store.at(rel[done])
        acqs["release_row"] = rel

    def edges(src: Edges) -> Edges:
        return {k: [replace(acc, row=at(acc.row), held_row=at(acc.held_row)) for acc in accs]
                for k, accs in src.items()}

    out = Replay(
        acquisitions=acqs, edges=edges(rep.edges),
        usage={c: {b: at(r) for b, r in bits.items()} for c, bits in rep.usage.items()},
        recursions=[Recursion(at(x.row), at(x.held_row), x.same_instance, x.cls)
                    for x in rep.recursions],
        sleeps=[replace(s, row=at(s.row), reasons=list(s.reasons),
                        held=[new_acq[a] for a in s.held],
                        all_held=[new_acq[a] for a in s.all_held])
                for s in rep.sleeps],
        switch_baseline=rep.switch_baseline, unmatched_releases=rep.unmatched_releases,
        irq_leaked=rep.irq_leaked, warnings=list(rep.warnings))
    kept = set(store.rows.tolist()) if text_sites else set()
    return Renumbered(
        replay=out, wait_edges=edges(wait_edges),
        cases=[AllocationCase(at(c.row), tuple((at(r), k) for r, k in c.held), c.repeats)
               for c in cases],
        text_sites={at(r): f for r, f in (text_sites or {}).items() if r in kept})
