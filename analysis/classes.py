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

from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass

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
    origin: str  # "static", "heap", "instance"
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
    frees_by_ptr: dict[int, list[int]] = {}
    for p, t in zip(f_ptr.tolist(), f_ts.tolist(), strict=True):
        frees_by_ptr.setdefault(p, []).append(t)

    table: list[LockClass] = []
    index: dict[str, int] = {}

    def intern(c: LockClass) -> int:
        i = index.get(c.key)
        if i is None:
            i = index[c.key] = len(table)
            table.append(c)
        return i

    out = np.full(len(lock_rows), -1, dtype=np.int64)
    unknown: list[int] = []
    uniq, inverse = np.unique(addr, return_inverse=True)
    for ui, a in enumerate(uniq.tolist()):
        members = np.nonzero(inverse == ui)[0]
        sym = symbols.lookup(a, int(ts[members[0]]))
        if sym is not None:
            name = sym.name if sym.offset == 0 else f"{sym.name}+{sym.offset:#x}"
            key = f"static:{sym.module}:{name}"
            out[members] = intern(LockClass(name, key, "static", sym.module, sig=key))
            continue
        # heap: objects that contained ``a`` at some time
        lo = int(np.searchsorted(a_ptr, np.uint64(max(a - max_obj, 0)), side="left"))
        hi = int(np.searchsorted(a_ptr, np.uint64(a), side="right"))
        cand = [j for j in range(lo, hi) if int(a_end[j]) > a]
        cand.sort(key=lambda j: int(a_ts[j]))
        cand_ts = [int(a_ts[j]) for j in cand]
        for m in members.tolist():
            t = int(ts[m])
            k = bisect_right(cand_ts, t) - 1
            cls = None
            if k >= 0:
                j = cand[k]
                base = int(a_ptr[j])
                frees_here = frees_by_ptr.get(base, [])
                if not any(cand_ts[k] < ft < t for ft in frees_here):
                    site = symbols.lookup(int(a_ip[j]), int(a_ts[j]))
                    if site is not None and site.name not in GENERIC_ALLOCATORS:
                        off = a - base
                        size = int(a_end[j]) - base
                        name = f"{site.name}():obj+{off:#x}"
                        key = f"heap:{site.module}:{site.name}:{off:#x}:{size}"
                        cls = LockClass(
                            name, key, "heap", site.module,
                            f"at offset {off:#x} of a {size}-byte object allocated at {site}",
                            sig=key)
            if cls is None:
                unknown.append(m)
                continue
            out[m] = intern(cls)
    _instance_classes(unknown, addr, ips, ts, symbols, out, intern)
    return out, table


def _instance_classes(rows: list[int], addr: np.ndarray, ips: np.ndarray, ts: np.ndarray,
                      symbols: RunSymbols,
                      out: np.ndarray, intern: Callable[[LockClass], int]) -> None:
    """Classes for locks with neither symbol nor allocation: instances taken at a
    common call site are one class (the code that takes them is the code that
    knows their type), found with a union-find over (instance, call site)."""
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    site_owner: dict[int, int] = {}
    for m in rows:
        a, ip = int(addr[m]), int(ips[m])
        o = site_owner.setdefault(ip, a)
        ra, ro = find(a), find(o)
        if ra != ro:
            parent[max(ra, ro)] = min(ra, ro)
    # name each group after its most frequent acquiring function
    funcs: dict[int, dict[str, int]] = {}
    for m in rows:
        sym = symbols.lookup(int(ips[m]), int(ts[m]))
        fn = sym.name if sym else "?"
        d = funcs.setdefault(find(int(addr[m])), {})
        d[fn] = d.get(fn, 0) + 1
    for m in rows:
        root = find(int(addr[m]))
        fns = funcs[root]
        where = max(sorted(fns), key=lambda f: fns[f])
        sym = symbols.lookup(int(ips[m]), int(ts[m]))
        mod = sym.module if sym else "vmlinux"
        out[m] = intern(LockClass(
            f"lock@{where}", f"instance:{root:#x}", "instance", mod,
            f"no allocation or symbol known; instances taken at the same call sites, "
            f"mostly in {where}()", sig=f"instance@{where}"))
