"""Releases the trace may not show: which acquisitions are suspect, and what that hid.

The run's manifest knows where a release can be invisible:

* an inlined unlock of a module that could not be probed (``inline_locks.skipped``:
  its DWARF location could not be turned into a fetch, or no instruction on the
  instance's path can carry a kprobe): that module's inlined acquisitions of the
  same lock type are suspect;
* an unlock probe the kernel refused (``probes.failed``) or whose hits kprobes
  missed (``lost.kprobe_missed_by_probe``): every acquisition of that lock type;
* lost events (``lost.total``): every spinning lock.

The replay (analysis.heldlocks) ends a suspect lock earlier than others (see
its docstring); this module gives it the rows, a way to ask whether the taker
is still on a stack, and the one health line that says what the forced
releases may hide.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from tracedep.analysis.acquisitions import FORCED_REASONS
from tracedep.analysis.health import ForcedClass, ForcedReleases
from tracedep.analysis.heldlocks import SPIN_TYPES, HolderOnStack, Replay
from tracedep.analysis.replay_types import RowSet
from tracedep.analysis.run_symbols import RunSymbols
from tracedep.common.run_manifest import RunManifest
from tracedep.tracer.probes import GROUP, LOCK_FUNCS, parse_event_name

REASON_TEXT = {
    "preempted": "at a preemption of their task",
    "preempt-count": "where preempt_count showed them released",
    "user-space": "at a return to user space or task exit",
    "release-unseen": "where their release probe is known to be missing and the "
                      "function that took them was no longer on the stack",
    "re-acquired": "when their holder took them again (reported as recursive locking)",
    "gap": "where the trace has a gap (events missing: a page or record could not be read, "
           "or a CPU changed task with no context switch traced)",
}


@dataclass(frozen=True)
class MissingReleases:
    types: frozenset[str] = frozenset()  # lock types whose every release may be unseen
    module_types: frozenset[tuple[str, str]] = frozenset()  # (module, lock type) of inlines
    sources: tuple[str, ...] = ()  # why, for the report

    def __bool__(self) -> bool:
        return bool(self.types or self.module_types)


@dataclass
class _Acc:
    types: set[str] = field(default_factory=set)
    module_types: set[tuple[str, str]] = field(default_factory=set)
    sources: list[str] = field(default_factory=list)


def _release_type(event: str) -> str | None:
    """The lock type an unlock probe's event name (with or without group) releases."""
    name = event if "/" in event else f"{GROUP}/{event}"
    parsed = parse_event_name(name.split()[0].split(":", 1)[-1])
    if parsed is None or parsed[0] != "ul":
        return None
    lf = LOCK_FUNCS.get(parsed[1])
    return lf.lock_type if lf is not None and lf.release else None


def from_manifest(info: RunManifest) -> MissingReleases:
    acc = _Acc()
    skipped = info.inline_locks.skipped if info.inline_locks is not None else []
    per_mod: dict[tuple[str, str], int] = {}
    for s in skipped if isinstance(skipped, list) else []:
        lf = LOCK_FUNCS.get(str(s.get("func", ""))) if isinstance(s, dict) else None
        if lf is not None and lf.release:
            k = (str(s.get("module", "?")), lf.lock_type)
            per_mod[k] = per_mod.get(k, 0) + 1
        elif isinstance(s, dict) and "func" not in s and s.get("module"):
            # a module whose DWARF was unusable: none of its inlined unlocks is seen
            # (the types the tracer names; older manifests name none: the spinning ones)
            types = s.get("lock_types")
            types = types if isinstance(types, list) else sorted(SPIN_TYPES)
            for lt in (str(t) for t in types):
                per_mod[(str(s["module"]), lt)] = per_mod.get((str(s["module"]), lt), 0) + 1
    for (mod, lt), n in sorted(per_mod.items()):
        acc.module_types.add((mod, lt))
        acc.sources.append(f"{n} inlined {lt} release(s) of {mod} not probed "
                           f"(manifest.json inline_locks.skipped)")
    refused: dict[str, int] = {}
    for d in info.probes.failed:
        rt = _release_type(str(d))
        if rt is not None:
            refused[rt] = refused.get(rt, 0) + 1
    for lt, n in sorted(refused.items()):
        acc.types.add(lt)
        acc.sources.append(f"{n} {lt} release probe(s) refused by the kernel")
    lost = info.lost
    missed: dict[str, int] = {}
    for ev, n in lost.kprobe_missed_by_probe.items():
        mt = _release_type(str(ev))
        if mt is not None and isinstance(n, int) and n > 0:
            missed[mt] = missed.get(mt, 0) + n
    for lt, n in sorted(missed.items()):
        acc.types.add(lt)
        acc.sources.append(f"{n:,} {lt} release(s) missed by kprobes")
    if lost.total > 0:
        acc.types |= SPIN_TYPES
        acc.sources.append(f"{lost.total:,} events lost")
    return MissingReleases(frozenset(acc.types), frozenset(acc.module_types),
                           tuple(acc.sources))


def suspect_rows(events: pd.DataFrame, lock_rows: np.ndarray, missing: MissingReleases,
                 info: RunManifest, symbols: RunSymbols) -> AbstractSet[int]:
    """The acquire rows (of ``lock_rows``, sorted) whose release may be invisible."""
    if not missing or not len(lock_rows):
        return RowSet()
    col = events["lock_type"].iloc[lock_rows]
    sel = _of_types(col, missing.types)
    if missing.module_types:
        lt = col.to_numpy().astype(str)
        sites = info.inline_sites
        names = events["event"].iloc[lock_rows].to_numpy().astype(str)
        ips = events["ip"].to_numpy()[lock_rows]
        tss = events["ts_ns"].to_numpy()[lock_rows]
        mods = {m for m, _ in missing.module_types}
        for k in np.nonzero(~sel & np.isin(lt, [t for _, t in missing.module_types]))[0]:
            site = sites.get(names[k].partition("/")[2])
            mod = site.get("module") if isinstance(site, dict) else None
            if mod is None and mods:
                mod = symbols.module_of(int(ips[k]), int(tss[k]))
            sel[k] = (str(mod), lt[k]) in missing.module_types
    return RowSet.of_sorted(lock_rows[sel])


def _of_types(col: pd.Series, types: frozenset[str]) -> np.ndarray:
    """Which values of ``col`` are one of ``types`` (a categorical by its categories:
    a window has a few lock types and tens of thousands of acquisitions)."""
    if not types:
        return np.zeros(len(col), bool)
    if isinstance(col.dtype, pd.CategoricalDtype):
        codes = col.cat.codes.to_numpy()
        known = np.append(np.isin(col.cat.categories.astype(str), list(types)), "nan" in types)
        return known[codes]  # code -1 (no value) reads the last: astype(str) gave "nan"
    return np.isin(col.to_numpy().astype(str), list(types))


def holder_on_stack(events: pd.DataFrame, stacks: list[tuple[int, ...]],
                    symbols: RunSymbols, row0: int = 0,
                    earlier: Callable[[int], tuple[int, int] | None] | None = None
                    ) -> HolderOnStack:
    """Is the function that took a lock (its acquire row's call site) on the stack (or
    the call site) of a later event row?  None when either is unknown.  ``events``:
    the trace's rows from ``row0`` on (a window of it); ``earlier``: the call site and
    time of an acquire row before them (a lock still held from an earlier window)."""
    ips = events["ip"].to_numpy()
    sids = events["stack_id"].to_numpy()
    tss = events["ts_ns"].to_numpy()

    def func(addr: int, ts: int) -> tuple[str, str] | None:
        s = symbols.lookup(addr, ts)
        return (s.module, s.name) if s is not None and s.size else None

    def site(r: int) -> tuple[int, int]:
        if r >= row0:
            return int(ips[r - row0]), int(tss[r - row0])
        got = earlier(r) if earlier is not None else None
        if got is None:
            raise KeyError(f"acquire row {r}: before this window, and not a held lock")
        return got

    def ask(acq_row: int, row: int) -> bool | None:
        r = row - row0
        ts = int(tss[r])
        ip, at = site(acq_row)
        taker = func(ip, at) if ip else None
        if taker is None:
            return None
        addrs = [int(ips[r])] if ips[r] else []
        sid = int(sids[r])
        if 0 <= sid < len(stacks):
            addrs += [int(a) for a in stacks[sid]]
        if not addrs:
            return None
        return any(func(a, ts) == taker for a in addrs)

    return ask


@dataclass
class ForcedCount:
    """Forced releases counted by reason and by lock class, as they come: from a whole
    replay (:func:`health`) or from the acquisitions a stream settles, window by
    window (analysis.stream_pipeline)."""

    by_reason: dict[str, int] = field(default_factory=dict)
    per_class: dict[str, int] = field(default_factory=dict)

    def add(self, reasons: Iterable[str], classes: Iterable[int], names: list[str]) -> None:
        """Each forced release's reason and its class (an index into ``names``)."""
        for why, c in zip(reasons, classes, strict=True):
            self.by_reason[why] = self.by_reason.get(why, 0) + 1
            name = names[int(c)] if 0 <= int(c) < len(names) else "?"
            self.per_class[name] = self.per_class.get(name, 0) + 1

    def summary(self, missing: MissingReleases) -> ForcedReleases:
        """``health.forced_releases`` of analysis.json: counts, classes, why suspect."""
        classes = sorted(self.per_class.items(), key=lambda kv: (-kv[1], kv[0]))
        return ForcedReleases(total=sum(self.by_reason.values()),
                              by_reason={r: self.by_reason[r] for r in FORCED_REASONS
                                         if self.by_reason.get(r)},
                              classes=[ForcedClass(n, c) for n, c in classes],
                              suspect_sources=list(missing.sources))


def health(rep: Replay, missing: MissingReleases, class_name: list[str]) -> ForcedReleases:
    """``health.forced_releases`` of analysis.json, from a whole replay."""
    cls = rep.acquisitions["cls"].to_numpy() if len(rep.acquisitions) else np.zeros(0, int)
    count = ForcedCount()
    count.add((f.reason for f in rep.forced), (cls[f.acq] for f in rep.forced), class_name)
    return count.summary(missing)


def warning(summary: ForcedReleases) -> str | None:
    """The report's one line on forced releases (never one per finding)."""
    n = summary.total
    if not n:
        return None
    how = "; ".join(f"{c} {REASON_TEXT.get(r, r)}" for r, c in summary.by_reason.items())
    names = [c.lock_class for c in summary.classes]
    shown = ", ".join(names[:6]) + (f", … (+{len(names) - 6} more)" if len(names) > 6 else "")
    why = summary.suspect_sources
    text = (f"{n} held lock(s) were ended without their release being seen ({how}): "
            f"a sleep or lock-order finding that needed {shown} still held after that "
            f"point is not reported")
    if why:
        text += f"; releases may be unseen because: {'; '.join(why)}"
    return text
