"""``invalid-wait-context``: what would break on PREEMPT_RT, seen on a stock kernel.

On PREEMPT_RT a ``spinlock_t`` or ``rwlock_t`` is a sleeping lock (rt_mutex based),
while a ``raw_spinlock_t`` still spins with preemption off.  So, under a held
``raw_spinlock_t``:

* taking a ``spinlock_t`` or ``rwlock_t`` is "BUG: Invalid wait context" (lockdep with
  ``CONFIG_PROVE_RAW_LOCK_NESTING``);
* allocating memory at all, even ``GFP_ATOMIC``: the slab and page allocators take
  ``spinlock_t`` locks on RT.

On the traced (non-RT) kernel all of it is fine, and spin_lock() and raw_spin_lock()
are one function: the lock types come from DWARF (analysis.lock_ctypes), and a pair
is judged only when both types are known; the inner acquisition or the allocation
must be in module code (the core kernel's own nestings are not judged: lockdep's
wait-type overrides there are invisible without lockdep).  A sleeping lock or a
reclaiming allocation under a raw spinlock is already ``sleep-in-atomic``; hardirq
context (which RT threads unless ``IRQF_NO_THREAD``) is not judged.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from tracedep.analysis.findings import Finding, Site, WitnessKind
from tracedep.analysis.heldlocks import SPIN_TYPES, Replay
from tracedep.analysis.lock_ctypes import RAW, RWLOCK, SPIN, LockTypes, Scope
from tracedep.analysis.replay_inputs import GFP_DIRECT_RECLAIM
from tracedep.analysis.row_store import AllocationCase
from tracedep.analysis.rules import Ctx, driver_of, gfp_text
from tracedep.analysis.run_symbols import RunSymbols
from tracedep.common.jsonvalue import JSON

KIND = "invalid-wait-context"
LOCKDEP_TITLE = "BUG: Invalid wait context"
CORE_MODULES = ("vmlinux", "?")


@dataclass
class _Judge:
    cx: Ctx
    types: LockTypes
    ips: np.ndarray = field(init=False)
    ts: np.ndarray = field(init=False)
    ltypes: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        e = self.cx.events
        self.ips, self.ts = e["ip"].to_numpy(), e["ts_ns"].to_numpy()
        self.ltypes = e["lock_type"].astype(str).to_numpy()

    def ctype(self, row: int, cls: int) -> str | None:
        """The C type of the lock that event row ``row`` takes (class ``cls``)."""
        lt = str(self.ltypes[row])
        if lt in ("rwlock-r", "rwlock-w"):
            return RWLOCK
        if lt != "spinlock" or cls < 0:
            return None
        ip, ts = int(self.ips[row]), int(self.ts[row])
        mod = self.cx.symbols.module_of(ip, ts) if ip else None
        if mod is None or mod == "?":
            return None
        lc = self.cx.cls(cls)
        site = self.types.at_site(mod, ip, ts)
        obj = self.types.of_object(lc.key, lc.name, mod, ip, ts)
        if site is not None and obj is not None and site != obj:
            return None  # the evidence disagrees: judge nothing
        return obj or site

    def in_module(self, row: int) -> bool:
        ip, ts = int(self.ips[row]), int(self.ts[row])
        return bool(ip) and self.cx.symbols.module_of(ip, ts) not in (None, *CORE_MODULES)


def rt_findings(cx: Ctx, scope: Scope | None, types: LockTypes | None = None,
                cases: Iterable[AllocationCase] = ()) -> list[Finding]:
    """``scope``: DWARF scopes at code addresses (analysis.dwarf_pass); without DWARF
    no type is known and nothing is judged.  ``types``: the lock types' reader, if
    not one over ``scope``.  ``cases``: :func:`allocation_cases`, in ``cx``'s rows."""
    if types is None and scope is None:
        return []
    j = _Judge(cx, types or LockTypes(scope or (lambda m, ip, ts: [])))
    groups: dict[tuple[str, ...], Finding] = {}
    _nested_locks(j, groups)
    for case in cases:
        raw = [(a, c) for a, c in case.held if j.ctype(a, c) == RAW]
        if raw:
            _allocation(cx, case.row, raw[-1], int(cx.events["gfp"].to_numpy()[case.row]), groups,
                        1 + case.repeats)
    return list(groups.values())


def judged(scope: Scope | None, types: LockTypes | None) -> bool:
    """Does :func:`rt_findings` judge anything (are lock types known at all)?"""
    return types is not None or scope is not None


def _nested_locks(j: _Judge, groups: dict[tuple[str, ...], Finding]) -> None:
    cx = j.cx
    for (held, inner), accs in sorted(cx.replay.edges.items()):
        for acc in accs:
            if not j.in_module(acc.row):
                continue
            inner_t = j.ctype(acc.row, inner)
            if inner_t not in (SPIN, RWLOCK) or j.ctype(acc.held_row, held) != RAW:
                continue
            lh, li = cx.cls(held), cx.cls(inner)
            s_in = cx.site(acc.row, WitnessKind.ACQUIRE,
                           f"{li.name} ({inner_t}) acquired while holding {lh.name} "
                           f"(raw_spinlock_t)", li.name, with_stack=False, holding=lh.name)
            fn = cx.src(s_in.frames[0], s_in.ts_ns)
            key = (lh.sig, li.sig, fn)
            if key in groups:
                groups[key].count += acc.count
                continue
            s_held = cx.site(acc.held_row, WitnessKind.HELD, f"held {lh.name} (raw_spinlock_t)",
                             lh.name, with_stack=False)
            msg = (f"{li.name} ({inner_t}) is acquired in {fn}() while {lh.name} "
                   f"(raw_spinlock_t) is held: on PREEMPT_RT a {inner_t} is a sleeping lock "
                   f"and this is \"{LOCKDEP_TITLE}\"; fine on this non-RT kernel")
            groups[key] = _finding(cx, [lh.name, li.name], [s_in, s_held], msg, key,
                                   {"inner": inner_t, "api": f"{inner_t} lock"}, fn,
                                   [lh.module, li.module], acc.count)


def allocation_cases(events: pd.DataFrame, rep: Replay, symbols: RunSymbols
                     ) -> list[AllocationCase]:
    """Allocations that cannot reclaim (those that can are sleep-in-atomic), in module
    code, under spinning locks of the same task and context: the cases
    :func:`rt_findings` judges (one of them a raw_spinlock_t makes a finding).  Read
    from the whole frame and the replay's acquisitions, before the rules' row store
    is made (analysis.row_store); repeats of one verdict are counted, not kept."""
    gfp = events["gfp"].to_numpy()
    cand = np.nonzero((events["kind"].to_numpy() == "alloc")
                      & ((gfp & GFP_DIRECT_RECLAIM) == 0))[0]
    ips, ts = events["ip"].to_numpy(), events["ts_ns"].to_numpy()

    def site(r: int) -> tuple[int, int]:
        ip = int(ips[r])
        return ip, symbols.epoch(ip, int(ts[r]))

    rows = [int(r) for r in cand
            if ips[r] and symbols.module_of(int(ips[r]), int(ts[r])) not in (None, *CORE_MODULES)]
    if not rows:
        return []
    acq = rep.acquisitions
    ok = acq[(acq["lock_type"].isin(SPIN_TYPES)) & (acq["release_row"] >= 0)
             & (acq["forced"] == "") & (~acq["handed_off"].astype(bool))]
    by_task = {k: g for k, g in ok.groupby(["task", "ctx"], sort=False)}
    pid, cpu = events["pid"].to_numpy(), events["cpu"].to_numpy()
    hard, soft, nmi = (events[c].to_numpy() for c in ("in_hardirq", "in_softirq", "in_nmi"))
    ltypes, funcs = events["lock_type"], events["func"]
    found: dict[Hashable, list[object]] = {}
    for r in rows:
        ctx = "nmi" if nmi[r] else "hardirq" if hard[r] else "softirq" if soft[r] else "process"
        task = int(pid[r]) if pid[r] > 0 else -1 - int(cpu[r])
        g = by_task.get((task, ctx))
        if g is None:
            continue
        live = g[(g["row"] < r) & (g["release_row"] > r)].sort_values("row")
        held = tuple((int(a), int(c)) for a, c in zip(live["row"].to_numpy(),
                                                       live["cls"].to_numpy(), strict=True))
        if not held:
            continue
        key = verdict_key(site(r), int(gfp[r]), str(funcs.iat[r]),
                          tuple((c, str(ltypes.iat[a]), site(a)) for a, c in held))
        seen = found.get(key)
        if seen is None:
            found[key] = [r, held, 0]
        else:
            seen[2] += 1  # type: ignore[operator]
    return [AllocationCase(r, h, n) for r, h, n in found.values()]  # type: ignore[arg-type]


def verdict_key(site: tuple[int, int], gfp: int, func: str,
                held: tuple[tuple[int, str, tuple[int, int]], ...]) -> Hashable:
    """Everything the verdict on an allocation reads: its call site (an address within
    one load of its module), flags and function, and each held lock's class, type and
    call site (``_Judge.ctype``)."""
    return (site, gfp, func, held)


def _allocation(cx: Ctx, r: int, raw: tuple[int, int], gfp: int,
                groups: dict[tuple[str, ...], Finding], count: int) -> None:
    held_row, held = raw
    lh = cx.cls(held)
    api = f"{cx.events['func'].iat[r]}({gfp_text(gfp)})"
    s_alloc = cx.site(r, WitnessKind.SLEEP, f"allocation {api} while holding {lh.name} "
                      f"(raw_spinlock_t)", None, with_stack=False, holding=lh.name)
    fn = cx.src(s_alloc.frames[0], s_alloc.ts_ns)
    key = (lh.sig, "allocation", fn)
    if key in groups:
        groups[key].count += count
        return
    s_held = cx.site(held_row, WitnessKind.HELD, f"held {lh.name} (raw_spinlock_t)", lh.name,
                     with_stack=False)
    msg = (f"{api} in {fn}() while {lh.name} (raw_spinlock_t) is held: on PREEMPT_RT the "
           f"allocator takes sleeping locks, even for GFP_ATOMIC; fine on this non-RT kernel")
    groups[key] = _finding(cx, [lh.name], [s_alloc, s_held], msg, key,
                           {"inner": "allocation", "api": api}, fn, [lh.module], count)


def _finding(cx: Ctx, locks: list[str], sites: list[Site], msg: str, key: tuple[str, ...],
             extra: dict[str, str], fn: str, modules: list[str], count: int) -> Finding:
    frames = [f for s in sites for f in s.frames]
    details: dict[str, JSON] = {"function": fn, "held": RAW, **extra,
                                  "preempt_rt_only": True, "lockdep": LOCKDEP_TITLE}
    return Finding(kind=KIND, driver=driver_of(frames, modules), locks=locks, sites=sites,
                   message=f"PREEMPT_RT only: {msg}",
                   first_ts_ns=min(s.ts_ns or 0 for s in sites), count=count, key=key,
                   details=details)
