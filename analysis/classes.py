"""Lock classes, as lockdep means them, for every lock event of a trace.

* static lock: the symbol it lives in (``rtnl_mutex``; ``td_dev+0x10`` inside a struct);
* heap lock: the allocation site of the object that held it at that moment (from
  the ``kmem`` events) plus the lock's offset in the object, so two instances in
  two objects from one site are one class;
* otherwise (allocated before tracing, per-CPU data, page allocations): the
  instance itself, named after the function that first took it.  Findings on
  such classes say so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from tracedep.analysis.symbols import RunSymbols

# Allocation helpers whose call site says nothing about the object's type.
GENERIC_ALLOCATORS = frozenset({
    "devm_kmalloc", "kmemdup", "kstrdup", "krealloc", "kvmalloc_node", "kvmalloc",
    "__kmalloc_node_track_caller", "kmalloc_array", "kcalloc", "kvzalloc", "kvcalloc",
    "__kvmalloc_node", "mempool_alloc", "mempool_alloc_slab", "mempool_kmalloc",
    "kmemdup_nul", "alloc_netdev_mqs", "__alloc_skb", "__kmalloc_track_caller",
})


@dataclass(frozen=True)
class LockClass:
    name: str  # shown to users
    key: str  # stable across runs and KASLR: used in signatures
    origin: str  # "static", "heap", "instance", "lockdep" (named by the kernel's lockdep)
    module: str  # where the lock is defined/allocated ("vmlinux" for the core kernel)
    detail: str = ""  # e.g. "offset 0x8 in a 64-byte object allocated at td_ring_alloc+0x1c"
    sig: str = ""  # the stable part of ``key`` (instances: who first took it, not where it is)


def assign(events: pd.DataFrame, symbols: RunSymbols, lock_rows: np.ndarray
           ) -> tuple[np.ndarray, list[LockClass]]:
    """Class id for each row in ``lock_rows`` (indices into ``events``), and the class table."""
    addr = events["lock_addr"].to_numpy()[lock_rows]
    ts = events["ts_ns"].to_numpy()[lock_rows]
    ips = events["ip"].to_numpy()[lock_rows]
    kinds = events["kind"].to_numpy()
    allocs = np.nonzero((kinds == "alloc") & (events["ptr"].to_numpy() != 0)
                        & (events["bytes"].to_numpy() > 0))[0]
    frees = np.nonzero(kinds == "free")[0]
    a_ptr = events["ptr"].to_numpy()[allocs]
    order = np.argsort(a_ptr, kind="stable")
    a_ptr = a_ptr[order].astype(np.uint64)
    a_rows = allocs[order]
    a_end = a_ptr + events["bytes"].to_numpy()[a_rows].astype(np.uint64)
    a_ts = events["ts_ns"].to_numpy()[a_rows]
    a_ip = events["ip"].to_numpy()[a_rows]
    max_obj = int(events["bytes"].to_numpy()[a_rows].max()) if len(a_rows) else 0
    f_ptr = events["ptr"].to_numpy()[frees]
    f_ts = events["ts_ns"].to_numpy()[frees]
    forder = np.lexsort((f_ts, f_ptr))
    f_ptr, f_ts = f_ptr[forder], f_ts[forder]

    table: list[LockClass] = []
    index: dict[str, int] = {}

    def intern(c: LockClass) -> int:
        i = index.get(c.key)
        if i is None:
            i = index[c.key] = len(table)
            table.append(c)
        return i

    def freed_between(ptr: int, after: int, before: np.ndarray) -> np.ndarray:
        """For each time in ``before``: was ``ptr`` freed in (after, that time)?"""
        lo = int(np.searchsorted(f_ptr, np.uint64(ptr), side="left"))
        hi = int(np.searchsorted(f_ptr, np.uint64(ptr), side="right"))
        times = f_ts[lo:hi]
        first = int(np.searchsorted(times, after, side="right"))
        if first >= len(times):
            return np.zeros(len(before), dtype=bool)
        return before > times[first]

    out = np.full(len(lock_rows), -1, dtype=np.int64)
    unknown: list[np.ndarray] = []
    uniq, inverse = np.unique(addr, return_inverse=True)
    by_addr = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[by_addr], np.arange(len(uniq) + 1))
    # a kernel with lockdep names its classes itself (tracer.lockdep_events); a row
    # lockdep did not name (kprobes missed its partner) takes its neighbour's name
    ld_names = (events["lock_name"].astype(str).to_numpy()[lock_rows]
                if "lock_name" in events.columns else np.full(len(lock_rows), ""))
    has_name = ld_names != ""
    row_ld = np.full(len(lock_rows), "", dtype=object)
    for ui in range(len(uniq)) if has_name.any() else ():
        members = by_addr[bounds[ui]:bounds[ui + 1]]
        named = members[has_name[members]]
        if len(named):
            # an address reused by an object of another class: each row takes the
            # name of the nearest named row at or before it
            pos = np.searchsorted(named, members, side="right") - 1
            row_ld[members] = ld_names[named[np.maximum(pos, 0)]]
    for ui, a in enumerate(uniq.tolist()):
        members = by_addr[bounds[ui]:bounds[ui + 1]]
        sym = symbols.lookup(a, int(ts[members[0]]))
        if sym is not None:
            name = sym.name if sym.offset == 0 else f"{sym.name}+{sym.offset:#x}"
            key = f"static:{sym.module}:{name}"
            out[members] = intern(LockClass(name, key, "static", sym.module, sig=key))
            continue
        # heap: the object that contained ``a`` when each event happened
        lo = int(np.searchsorted(a_ptr, np.uint64(max(a - max_obj, 0)), side="left"))
        hi = int(np.searchsorted(a_ptr, np.uint64(a), side="right"))
        cand = np.arange(lo, hi)[a_end[lo:hi] > np.uint64(a)]
        cand = cand[np.argsort(a_ts[cand], kind="stable")]
        mts = ts[members]
        k = np.searchsorted(a_ts[cand], mts, side="right") - 1
        for kk in np.unique(k).tolist():
            sel = members[k == kk]
            cls = None
            if kk >= 0:
                j = int(cand[kk])
                base = int(a_ptr[j])
                live = ~freed_between(base, int(a_ts[j]), ts[sel])
                site = symbols.lookup(int(a_ip[j]), int(a_ts[j]))
                if site is not None and site.name not in GENERIC_ALLOCATORS:
                    off = a - base
                    size = int(a_end[j]) - base
                    fn = symbols.source_function(int(a_ip[j]), int(a_ts[j])) or site.name
                    name = f"{fn}():obj+{off:#x}"
                    # Site and offset, not the size: kmalloc rounds sizes per arch
                    # (arm64 to 128), and a finding must not depend on the arch.
                    key = f"heap:{site.module}:{fn}:{off:#x}"
                    cls = LockClass(
                        name, key, "heap", site.module,
                        f"at offset {off:#x} of a {size}-byte object allocated at {site}",
                        sig=key)
                    out[sel[live]] = intern(cls)
                    sel = sel[~live]
            if len(sel):
                unknown.append(sel)
    rest = np.concatenate(unknown) if unknown else np.zeros(0, dtype=np.int64)
    _instance_classes(rest, addr, ips, ts, symbols, out, intern)
    if _lockdep_classes(row_ld, out, table, intern):
        # the classes lockdep's names replaced are left unused: drop them
        used = np.unique(out[out >= 0])
        remap = np.full(len(table), -1, dtype=np.int64)
        remap[used] = np.arange(len(used))
        out[out >= 0] = remap[out[out >= 0]]
        table = [table[i] for i in used.tolist()]
    return out, _unique_names(table)


def _lockdep_classes(row_ld: np.ndarray, out: np.ndarray, table: list[LockClass],
                     intern: Callable[[LockClass], int]) -> bool:
    """Rows lockdep named get lockdep's class.  lockdep keys a class by its
    lock_class_key, which the tracepoint does not give, so two modules' ``&dev->lock``
    would be one name for two classes: they are told apart by the module of the
    class tracedep found itself (the allocation site's, the symbol's)."""
    rows = np.nonzero(row_ld != "")[0]
    if len(rows) == 0:
        return False
    pairs: dict[tuple[int, str], int] = {}
    for r in rows.tolist():
        k = (int(out[r]), str(row_ld[r]))
        c = pairs.get(k)
        if c is None:
            mod = table[k[0]].module if k[0] >= 0 else "vmlinux"
            key = f"lockdep:{mod}:{k[1]}"
            c = pairs[k] = intern(LockClass(k[1], key, "lockdep", mod,
                                            "lockdep's own class name", sig=key))
        out[r] = c
    return True


def _unique_names(table: list[LockClass]) -> list[LockClass]:
    """Two modules may name their locks alike (a driver and its twin): say whose."""
    seen: dict[str, int] = {}
    for c in table:
        seen[c.name] = seen.get(c.name, 0) + 1
    return [replace(c, name=f"{c.name} [{c.module}]") if seen[c.name] > 1
            and c.module != "vmlinux" else c for c in table]


def _instance_classes(rows: np.ndarray, addr: np.ndarray, ips: np.ndarray, ts: np.ndarray,
                      symbols: RunSymbols, out: np.ndarray,
                      intern: Callable[[LockClass], int]) -> None:
    """Classes for locks with neither symbol nor allocation: instances taken at a
    common call site are one class (the code that takes them is the code that
    knows their type), found with a union-find over (instance, call site)."""
    if len(rows) == 0:
        return
    pairs = np.stack([addr[rows], ips[rows]], axis=1)
    upairs, first, pinv, counts = np.unique(pairs, axis=0, return_index=True,
                                            return_inverse=True, return_counts=True)
    pinv = pinv.reshape(-1)
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    site_owner: dict[int, int] = {}
    for a, ip in upairs.tolist():
        o = site_owner.setdefault(ip, a)
        ra, ro = find(a), find(o)
        if ra != ro:
            parent[max(ra, ro)] = min(ra, ro)
    funcs: dict[int, dict[str, int]] = {}
    syms = []
    for (a, ip), f0, n in zip(upairs.tolist(), first.tolist(), counts.tolist(), strict=True):
        sym = symbols.lookup(ip, int(ts[rows[f0]]))
        syms.append(sym)
        d = funcs.setdefault(find(a), {})
        fn = sym.name if sym else "?"
        d[fn] = d.get(fn, 0) + n
    pair_cls = np.empty(len(upairs), dtype=np.int64)
    for i, (a, _ip) in enumerate(upairs.tolist()):
        root = find(a)
        fns = funcs[root]
        where = max(sorted(fns), key=lambda f: fns[f])
        sym = syms[i]
        pair_cls[i] = intern(LockClass(
            f"lock@{where}", f"instance:{root:#x}", "instance",
            sym.module if sym else "vmlinux",
            f"no allocation or symbol known; instances taken at the same call sites, "
            f"mostly in {where}()", sig=f"instance@{where}"))
    out[rows] = pair_cls[pinv]
