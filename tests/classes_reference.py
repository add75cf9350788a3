"""The lock-class assignment as it was before analysis.class_stream (commit a771888):
the reference that tests/analysis/test_class_stream.py compares the streaming engine
with, row for row.  A verbatim copy of analysis/classes.py of that commit, but for
this docstring and the declarations it shares with the engine (LockClass, ClassNamer, the
allocator and lock-type lists, the naming of alike names), which it imports; do not change it.

Lock classes, as lockdep means them, for every lock event of a trace.

* static lock: the symbol it lives in (``rtnl_mutex``; ``td_dev+0x10`` inside a struct);
* initialized lock: the lock's latest initializer call before the event
  (``__mutex_init(lock, name, key)`` & co., tracer.lock_init), when the object
  holding the lock was not freed in between: lockdep's own class, keyed by the
  module, the function that called the initializer and the name it passed
  (``&q->sysfs_lock``), and named by that name.  An inode's ``i_rwsem`` is keyed by
  its file system type, as ``inode_init_always()``'s ``lockdep_set_class()`` does
  (``&sb->s_type->i_mutex_key [debugfs]``).  An array of locks initialized at one
  call site is one class, as in lockdep.  An init class lasts until the next
  init at the address or the free of the object around it; memory with no
  allocation or free events (a stack frame) keeps it until the next init there,
  so an on-stack lock that only an inline spin_lock_init() set up, at an address
  where an on-stack completion or wait queue lived, takes that class;
* heap lock: the allocation call site of the object that held it at that moment
  (from the ``kmem`` events: the source line in a module with DWARF, else the
  call's offset in its function) plus the lock's offset in the object, so two
  instances in two objects from one site are one class, and two allocations in one
  function are two;
* otherwise (allocated before tracing, per-CPU data, page allocations): the
  instance itself, named after the function that first took it.  Findings on
  such classes say so.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from tracedep.analysis.class_model import (
    GENERIC_ALLOCATORS,
    SPINNING_LOCK_TYPES,
    ClassNamer,
    LockClass,
)
from tracedep.analysis.class_table import _unique_names
from tracedep.analysis.run_symbols import RunSymbols, Sym
from tracedep.analysis.type_names import fold_indices
from tracedep.tracer.lock_init import (
    DIR_REKEY,
    INODE_DIR_KEY_NAME,
    INODE_KEY_NAME,
    INODE_REKEY,
    LOCK_INITS,
    REKEY_TYPES,
    S_IFDIR,
    S_IFMT,
)
from tracedep.tracer.probes import api_name


def assign(events: pd.DataFrame, symbols: RunSymbols, lock_rows: np.ndarray,
           namer: ClassNamer | None = None) -> tuple[np.ndarray, list[LockClass]]:
    """Class id for each row in ``lock_rows`` (indices into ``events``), and the class table.

    ``namer`` names heap classes from their type (analysis.type_names); without it,
    or where it knows nothing, they are named by allocating function and offset."""
    addr = events["lock_addr"].to_numpy()[lock_rows]
    ts = events["ts_ns"].to_numpy()[lock_rows]
    ips = events["ip"].to_numpy()[lock_rows]
    heap = _Heap(events)
    table: list[LockClass] = []
    intern = _interner(table)
    inits = _InitIndex(events, symbols, heap.containing, heap.freed_after)
    ltypes = events["lock_type"].astype(str).to_numpy()[lock_rows]
    out = np.full(len(lock_rows), -1, dtype=np.int64)
    unknown: list[np.ndarray] = []
    uniq, inverse = np.unique(addr, return_inverse=True)
    by_addr = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[by_addr], np.arange(len(uniq) + 1))
    row_ld = _lockdep_names(events, lock_rows, by_addr, bounds)
    for ui, a in enumerate(uniq.tolist()):
        members = by_addr[bounds[ui]:bounds[ui + 1]]
        sym = symbols.lookup(a, int(ts[members[0]]))
        if sym is not None:
            name = sym.name if sym.offset == 0 else f"{sym.name}+{sym.offset:#x}"
            key = f"static:{sym.module}:{name}"
            out[members] = intern(LockClass(name, key, "static", sym.module, sig=key))
            continue
        if a in inits.addrs:
            got = inits.classes_for(a, ts[members], ltypes[members])
            hit = np.array([g is not None for g in got], dtype=bool)
            out[members[hit]] = [intern(g) for g in got if g is not None]
            members = members[~hit]
            if not len(members):
                continue
        # heap: the object that contained ``a`` when each event happened
        cand = heap.candidates(a)
        k = np.searchsorted(heap.ts[cand], ts[members], side="right") - 1
        for kk in np.unique(k).tolist():
            sel = members[k == kk]
            if kk >= 0:
                j = int(cand[kk])
                live = ~heap.freed_between(int(heap.ptr[j]), int(heap.ts[j]), ts[sel])
                cls = _heap_class(symbols, namer, heap, j, a, str(ltypes[sel[0]]))
                if cls is not None:
                    out[sel[live]] = intern(cls)
                    sel = sel[~live]
            if len(sel):
                unknown.append(sel)
    rest = np.concatenate(unknown) if unknown else np.zeros(0, dtype=np.int64)
    _instance_classes(rest, addr, ips, ts, symbols, out, intern)
    _split_spinning_members(out, ltypes, table, intern)
    if _lockdep_classes(row_ld, out, table, intern):
        table = _drop_unused(out, table)
    return out, _unique_names(table)


def _interner(table: list[LockClass]) -> Callable[[LockClass], int]:
    """``intern(c)``: the id of ``c``'s key in ``table``, appending ``c`` if new."""
    index: dict[str, int] = {}

    def intern(c: LockClass) -> int:
        i = index.get(c.key)
        if i is None:
            i = index[c.key] = len(table)
            table.append(c)
        return i

    return intern


class _Heap:
    """The trace's allocations (sorted by address) and frees (by pointer, then time)."""

    def __init__(self, events: pd.DataFrame) -> None:
        kinds = events["kind"].to_numpy()
        allocs = np.nonzero((kinds == "alloc") & (events["ptr"].to_numpy() != 0)
                            & (events["bytes"].to_numpy() > 0))[0]
        frees = np.nonzero(kinds == "free")[0]
        a_ptr = events["ptr"].to_numpy()[allocs]
        order = np.argsort(a_ptr, kind="stable")
        self.ptr = a_ptr[order].astype(np.uint64)
        a_rows = allocs[order]
        self.end = self.ptr + events["bytes"].to_numpy()[a_rows].astype(np.uint64)
        self.ts = events["ts_ns"].to_numpy()[a_rows]
        self.ip = events["ip"].to_numpy()[a_rows]
        self.max_obj = int(events["bytes"].to_numpy()[a_rows].max()) if len(a_rows) else 0
        f_ptr = events["ptr"].to_numpy()[frees]
        f_ts = events["ts_ns"].to_numpy()[frees]
        forder = np.lexsort((f_ts, f_ptr))
        self.f_ptr, self.f_ts = f_ptr[forder], f_ts[forder]

    def freed_between(self, ptr: int, after: int, before: np.ndarray) -> np.ndarray:
        """For each time in ``before``: was ``ptr`` freed in (after, that time)?"""
        lo = int(np.searchsorted(self.f_ptr, np.uint64(ptr), side="left"))
        hi = int(np.searchsorted(self.f_ptr, np.uint64(ptr), side="right"))
        times = self.f_ts[lo:hi]
        first = int(np.searchsorted(times, after, side="right"))
        if first >= len(times):
            return np.zeros(len(before), dtype=bool)
        return before > times[first]

    def containing(self, a: int, t: int) -> int:
        """Index of the allocation holding ``a`` at time ``t``, or -1."""
        lo = int(np.searchsorted(self.ptr, np.uint64(max(a - self.max_obj, 0)), side="left"))
        hi = int(np.searchsorted(self.ptr, np.uint64(a), side="right"))
        cand = np.arange(lo, hi)[(self.end[lo:hi] > np.uint64(a)) & (self.ts[lo:hi] <= t)]
        if not len(cand):
            return -1
        j = int(cand[np.argmax(self.ts[cand])])
        return -1 if self.freed_between(int(self.ptr[j]), int(self.ts[j]),
                                        np.array([t]))[0] else j

    def freed_after(self, j: int) -> int:
        """When the object of allocation ``j`` was first freed (max int64: never seen)."""
        ptr = np.uint64(self.ptr[j])
        lo = int(np.searchsorted(self.f_ptr, ptr, side="left"))
        hi = int(np.searchsorted(self.f_ptr, ptr, side="right"))
        times = self.f_ts[lo:hi]
        k = int(np.searchsorted(times, self.ts[j], side="right"))
        return int(times[k]) if k < len(times) else np.iinfo(np.int64).max

    def candidates(self, a: int) -> np.ndarray:
        """Indices of every allocation that ever covered ``a``, in time order."""
        lo = int(np.searchsorted(self.ptr, np.uint64(max(a - self.max_obj, 0)), side="left"))
        hi = int(np.searchsorted(self.ptr, np.uint64(a), side="right"))
        cand = np.arange(lo, hi)[self.end[lo:hi] > np.uint64(a)]
        return cand[np.argsort(self.ts[cand], kind="stable")]


def _lockdep_names(events: pd.DataFrame, lock_rows: np.ndarray, by_addr: np.ndarray,
                   bounds: np.ndarray) -> np.ndarray:
    """lockdep's class name of each lock row, "" where it gave none.

    A kernel with lockdep names its classes itself (tracer.lockdep_events); a row
    lockdep did not name (kprobes missed its partner) takes its neighbour's name.
    ``by_addr``, ``bounds``: the rows grouped by lock address."""
    ld_names = (events["lock_name"].astype(str).to_numpy()[lock_rows]
                if "lock_name" in events.columns else np.full(len(lock_rows), ""))
    has_name = ld_names != ""
    row_ld = np.full(len(lock_rows), "", dtype=object)
    for ui in range(len(bounds) - 1) if has_name.any() else ():
        members = by_addr[bounds[ui]:bounds[ui + 1]]
        named = members[has_name[members]]
        if len(named):
            # an address reused by an object of another class: each row takes the
            # name of the nearest named row at or before it
            pos = np.searchsorted(named, members, side="right") - 1
            row_ld[members] = ld_names[named[np.maximum(pos, 0)]]
    return row_ld


def _heap_class(symbols: RunSymbols, namer: ClassNamer | None, heap: _Heap, j: int, a: int,
                ltype: str) -> LockClass | None:
    """The class of the lock at ``a`` inside the object of allocation ``j``; None when
    the allocation's call site says nothing of the object's type (a generic allocator)."""
    base = int(heap.ptr[j])
    site = symbols.lookup(int(heap.ip[j]), int(heap.ts[j]))
    if site is None or api_name(site.name) in GENERIC_ALLOCATORS:
        return None
    off = a - base
    size = int(heap.end[j]) - base
    fn = symbols.source_function(int(heap.ip[j]), int(heap.ts[j])) or site.name
    typed = namer(site.module, int(heap.ip[j]), int(heap.ts[j]), off, size,
                  ltype) if namer is not None else None
    # an element of an array of locks: one class for the array, as
    # lockdep's one init site makes it (analysis.type_names)
    folded = fold_indices(typed) if typed else None
    name = folded or f"{fn}():obj+{off:#x}"
    # Call site and offset, not the size: kmalloc rounds sizes per arch
    # (arm64 to 128), and a finding must not depend on the arch.  The call
    # site, not the function: two objects allocated in one function are
    # two types.  Its source line where DWARF gives one (the same on every
    # arch), else its offset in the function (one kernel build's).
    loc = symbols.source_location(int(heap.ip[j]), int(heap.ts[j]))
    where = (f"{loc[0].rsplit('/', 1)[-1]}:{loc[1]}" if loc
             else f"{site.name}+{site.offset:#x}")
    key = f"heap:{site.module}:{fn}@{where}:" + (
        folded if folded and folded != typed else f"{off:#x}")
    return LockClass(
        name, key, "heap", site.module,
        f"at offset {off:#x} of a {size}-byte object allocated at {site}"
        + (f" ({loc[0]}:{loc[1]})" if loc else ""), sig=key)


def _drop_unused(out: np.ndarray, table: list[LockClass]) -> list[LockClass]:
    """The classes lockdep's names replaced are left unused: drop them, renumbering ``out``."""
    used = np.unique(out[out >= 0])
    remap = np.full(len(table), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    out[out >= 0] = remap[out[out >= 0]]
    return [table[i] for i in used.tolist()]


def _split_spinning_members(out: np.ndarray, ltypes: np.ndarray, table: list[LockClass],
                            intern: Callable[[LockClass], int]) -> None:
    """A spinning and a sleeping lock at one address are two locks: an rt_mutex's
    ``wait_lock`` is its first member, and a mutex or rwsem never is one.  Where a
    class holds both, its spinning rows become a class of their own."""
    if not len(out):
        return
    spinning = np.isin(ltypes, np.array(SPINNING_LOCK_TYPES))
    both = np.intersect1d(np.unique(out[spinning & (out >= 0)]),
                          np.unique(out[~spinning & (out >= 0)]))
    for c in both.tolist():
        lc = table[c]
        key = f"{lc.key}:spinlock"
        inner = intern(LockClass(f"{lc.name}:spinlock", key, lc.origin, lc.module,
                                 f"a spinlock at the address of {lc.name} (its first "
                                 f"member, as an rt_mutex's wait_lock)", sig=f"{lc.sig}:spinlock"))
        out[spinning & (out == c)] = inner


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


class _InitIndex:
    """The lock_init rows of a trace, by lock address: which class a lock event at
    an address takes from its latest initializer (tracer.lock_init)."""

    def __init__(self, events: pd.DataFrame, symbols: RunSymbols,
                 containing: Callable[[int, int], int], freed_after: Callable[[int], int]
                 ) -> None:
        rows = np.nonzero(events["kind"].to_numpy() == "lock_init")[0]
        addr = events["lock_addr"].to_numpy()[rows]
        ts = events["ts_ns"].to_numpy()[rows]
        order = np.lexsort((ts, addr))
        rows, addr, ts = rows[order], addr[order], ts[order]
        self.addrs = frozenset(np.unique(addr).tolist())
        self._ts: dict[int, np.ndarray] = {}
        self._cls: dict[int, list[LockClass | None]] = {}
        self._types: dict[int, list[tuple[str, ...]]] = {}
        self._end: dict[int, np.ndarray] = {}
        ip = events["ip"].to_numpy()[rows]
        pid = events["pid"].to_numpy()[rows]
        func = events["func"].astype(str).to_numpy()[rows]
        name = events["lock_name"].astype(str).to_numpy()[rows]
        value = events["value"].to_numpy()[rows]
        key = events["key_addr"].to_numpy()[rows] if "key_addr" in events.columns \
            else np.zeros(len(rows), dtype=np.uint64)
        bounds = np.flatnonzero(np.diff(addr.astype(np.int64), prepend=-1, append=-1) != 0)
        for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
            a = int(addr[lo])
            cls: list[LockClass | None] = []
            types: list[tuple[str, ...]] = []
            times: list[int] = []
            ends: list[int] = []
            for i in range(lo, hi):
                t, f = int(ts[i]), str(func[i])
                site = symbols.lookup(int(ip[i]), t)
                c: LockClass | None = None
                if f in DIR_REKEY:
                    # lockdep_annotate_inode_mutex_key(): a directory whose lock still has
                    # its fs type's i_mutex_key moves to i_mutex_dir_key; else no change
                    if not (int(value[i]) & S_IFMT == S_IFDIR and cls and cls[-1] is not None
                            and cls[-1].key == _inode_key(symbols, int(key[i]), t,
                                                          str(name[i]))):
                        continue
                    c = self._rekey_class(symbols, int(key[i]), t, str(name[i]), dir_key=True)
                    tt = REKEY_TYPES[f]
                elif f in INODE_REKEY:
                    c = self._rekey_class(symbols, int(key[i]), t, str(name[i]))
                    tt = REKEY_TYPES[f]
                elif (i > lo and func[i - 1] in INODE_REKEY and pid[i - 1] == pid[i]
                      and site is not None and site.name == func[i - 1] and cls):
                    # init_rwsem() then lockdep_set_class() in the re-keying function:
                    # the re-key (probed at that function's entry, so seen first) wins
                    c, tt = cls[-1], types[-1]
                else:
                    c = self._init_class(symbols, site, int(ip[i]), t, f, str(name[i]))
                    li = LOCK_INITS.get(f)
                    tt = li.lock_types if li else ()
                cls.append(c)
                types.append(tt)
                times.append(t)
                j = containing(a, t)
                ends.append(freed_after(j) if j >= 0 else int(np.iinfo(np.int64).max))
            end = np.array(ends, dtype=np.int64)
            self._ts[a] = np.array(times, dtype=np.int64)
            self._cls[a] = cls
            self._types[a] = types
            self._end[a] = end

    @staticmethod
    def _init_class(symbols: RunSymbols, site: Sym | None, ip: int, ts: int, func: str,
                    name: str) -> LockClass | None:
        if site is None:
            return None  # a call site nobody can name: no stable key
        fn = symbols.source_function(ip, ts) or site.name
        shown = name or f"{fn}():{func}"
        key = f"init:{site.module}:{fn}:{shown}"
        return LockClass(shown, key, "init", site.module,
                         f"lockdep's class: initialized by {func}() at {site}", sig=key)

    @staticmethod
    def _rekey_class(symbols: RunSymbols, fstype: int, ts: int, fsname: str,
                     dir_key: bool = False) -> LockClass | None:
        key = _inode_key(symbols, fstype, ts, fsname)
        if key is None:
            return None
        sym = symbols.lookup(fstype, ts) if fstype else None
        module = key.split(":")[1]
        fsname = fsname or (sym.name.removesuffix("_fs_type") if sym else "?")
        what = INODE_DIR_KEY_NAME if dir_key else INODE_KEY_NAME
        if dir_key:
            key = key.removesuffix(INODE_KEY_NAME) + INODE_DIR_KEY_NAME
        where = ("lockdep_annotate_inode_mutex_key" if dir_key
                 else "inode_init_always: lockdep_set_class")
        return LockClass(f"{what} [{fsname}]", key, "init", module,
                         f"lockdep's class of the {'directory' if dir_key else 'inode'} "
                         f"locks of file system type {fsname} ({where})", sig=key)

    def classes_for(self, a: int, ts: np.ndarray, ltypes: np.ndarray
                    ) -> list[LockClass | None]:
        """The init class of each event at ``a`` (times ``ts``, lock types), or None."""
        its = self._ts[a]
        k = np.searchsorted(its, ts, side="right") - 1
        out: list[LockClass | None] = []
        for kk, t, lt in zip(k.tolist(), ts.tolist(), ltypes.tolist(), strict=True):
            if kk < 0 or t >= self._end[a][kk] or lt not in self._types[a][kk]:
                out.append(None)
            else:
                out.append(self._cls[a][kk])
        return out


def _inode_key(symbols: RunSymbols, fstype: int, ts: int, fsname: str) -> str | None:
    """The class key of the inode locks of a file system type: its symbol (stable
    across runs and KASLR), else its name."""
    sym = symbols.lookup(fstype, ts) if fstype else None
    if sym is not None and sym.offset == 0:
        return f"init:{sym.module}:{sym.name}:{INODE_KEY_NAME}"
    if fsname:
        return f"init:vmlinux:fs:{fsname}:{INODE_KEY_NAME}"
    return None
