"""The class table of a whole trace, from what the stream collected (analysis.class_stream).

Four steps of analysis.classes look at the whole trace at once, so they run when the
stream ends, over a summary whose size is that of the code and of the addresses, not
of the events:

* the order of the table: classes.assign interns a class when it first meets it
  walking the lock addresses in ascending order (at one address: its symbol, then
  its initializers' classes in row order, then its allocations' in time order), so
  each class carries the least such place it was met (:class:`Met`);
* instance classes: a union-find over the distinct (address, call site) pairs of the
  events no symbol, initializer or allocation classed, named by the function with
  the most events in the group;
* a class with both spinning and sleeping events gives its spinning ones a class of
  their own;
* lockdep's names: the (class, name) pairs in the order of their first row, the
  classes lockdep's names left without a row dropped, and names made unique.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from tracedep.analysis.class_model import LockClass
from tracedep.analysis.run_symbols import RunSymbols, Sym

NAME_BITS = 20  # a (base slot, lockdep name) pair is one uint64: slot << 20 | name


@dataclass
class Met:
    """Where classes.assign would first meet a class: (address, step, then the order
    inside that step: 0 static, 1 initializer (the row), 2 allocation (its time
    stamp, pointer, row))."""

    where: tuple[int, int, int, int, int]
    cls: LockClass


@dataclass
class Collected:
    """What a stream of windows left for the table (analysis.class_stream)."""

    classes: dict[int, Met]  # base id of a class -> where it was first met
    pair_base: np.ndarray  # base ids of the instance (address, call site) pairs
    pair_addr: np.ndarray
    pair_ip: np.ndarray
    pair_count: np.ndarray  # events of each pair
    pair_ts: np.ndarray  # time stamp of its first event
    used_slots: np.ndarray  # base slots (base << 1 | spinning) of any lock row
    named: np.ndarray  # keys (slot << NAME_BITS | name) of rows with a lockdep name …
    named_pos: np.ndarray  # … and the first such row of each
    unnamed_slots: np.ndarray  # slots of rows no lockdep name reached
    names: list[str] = field(default_factory=list)  # name id -> lockdep's name ("" is 0)


@dataclass
class Table:
    """The table classes.assign makes, and the final id of each (slot, name) key."""

    classes: list[LockClass]
    keys: np.ndarray  # sorted (slot << NAME_BITS | name)
    final: np.ndarray  # the class id of each key

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Final class ids of keys (-1: a key the trace never had)."""
        if not len(self.keys):
            return np.full(len(keys), -1, dtype=np.int64)
        pos = np.searchsorted(self.keys, keys)
        pos[pos == len(self.keys)] = 0
        return np.where(self.keys[pos] == keys, self.final[pos], -1)


def interner(table: list[LockClass]) -> Callable[[LockClass], int]:
    """``intern(c)``: the id of ``c``'s key in ``table``, appending ``c`` if new."""
    index: dict[str, int] = {}

    def intern(c: LockClass) -> int:
        i = index.get(c.key)
        if i is None:
            i = index[c.key] = len(table)
            table.append(c)
        return i

    return intern


def build(col: Collected, symbols: RunSymbols, n_bases: int) -> Table:
    table: list[LockClass] = []
    intern = interner(table)
    of_base = np.full(n_bases, -1, dtype=np.int64)
    for b, met in sorted(col.classes.items(), key=lambda kv: kv[1].where):
        of_base[b] = intern(met.cls)
    of_base[col.pair_base] = _instance_classes(col, symbols, intern)
    slots = np.unique(np.concatenate([col.used_slots, col.unnamed_slots,
                                      col.named >> np.uint64(NAME_BITS)]).astype(np.int64))
    c1 = _split_spinning(slots, of_base, table, intern)
    keys, final = _lockdep(col, slots, c1, table, intern)
    if len(col.named):
        used = np.unique(final)
        remap = np.full(len(table), -1, dtype=np.int64)
        remap[used] = np.arange(len(used))
        final = remap[final]
        table = [table[i] for i in used.tolist()]
    return Table(_unique_names(table), keys, final)


def _split_spinning(slots: np.ndarray, of_base: np.ndarray, table: list[LockClass],
                    intern: Callable[[LockClass], int]) -> dict[int, int]:
    """Each used slot's class once a spinning and a sleeping lock at one class are two."""
    c0 = of_base[slots >> 1]
    spin = (slots & 1) == 1
    both = np.intersect1d(np.unique(c0[spin]), np.unique(c0[~spin]))
    split: dict[int, int] = {}
    for c in both.tolist():
        lc = table[c]
        key = f"{lc.key}:spinlock"
        split[c] = intern(LockClass(f"{lc.name}:spinlock", key, lc.origin, lc.module,
                                    f"a spinlock at the address of {lc.name} (its first "
                                    f"member, as an rt_mutex's wait_lock)",
                                    sig=f"{lc.sig}:spinlock"))
    return {s: (split.get(c, c) if s & 1 else c)
            for s, c in zip(slots.tolist(), c0.tolist(), strict=True)}


def _lockdep(col: Collected, slots: np.ndarray, c1: dict[int, int], table: list[LockClass],
             intern: Callable[[LockClass], int]) -> tuple[np.ndarray, np.ndarray]:
    """lockdep's classes, interned in the order of their first row; every key's class."""
    nb = np.uint64(NAME_BITS)
    keys = [np.asarray(col.unnamed_slots, dtype=np.uint64) << nb]
    final = [np.array([c1[int(s)] for s in col.unnamed_slots.tolist()], dtype=np.int64)]
    if len(col.named):
        order = np.argsort(col.named_pos, kind="stable")
        pairs: dict[tuple[int, int], int] = {}
        named = col.named[order]
        got = np.empty(len(named), dtype=np.int64)
        for i, k in enumerate(named.tolist()):
            p = (c1[k >> NAME_BITS], k & ((1 << NAME_BITS) - 1))
            c = pairs.get(p)
            if c is None:
                name = col.names[p[1]]
                mod = table[p[0]].module
                key = f"lockdep:{mod}:{name}"
                c = pairs[p] = intern(LockClass(name, key, "lockdep", mod,
                                                "lockdep's own class name", sig=key))
            got[i] = c
        keys.append(named)
        final.append(got)
    k = np.concatenate(keys).astype(np.uint64)
    f = np.concatenate(final)
    o = np.argsort(k, kind="stable")
    return k[o], f[o]


def _unique_names(table: list[LockClass]) -> list[LockClass]:
    """Two modules may name their locks alike (a driver and its twin): say whose.
    Within one module, two initializers' ``&x->wait`` or two allocation sites of one
    function: say which function or which site."""
    def names(cs: list[LockClass]) -> dict[str, int]:
        seen: dict[str, int] = {}
        for c in cs:
            seen[c.name] = seen.get(c.name, 0) + 1
        return seen

    seen = names(table)
    table = [replace(c, name=f"{c.name} [{c.module}]") if seen[c.name] > 1
             and c.module != "vmlinux" else c for c in table]
    seen = names(table)
    out = []
    for c in table:
        if seen[c.name] > 1 and c.origin in ("init", "heap"):
            # init:<module>:<function>:<name> -> the function;
            # heap:<module>:<fn>@<site>:<offset> -> the site (a site may hold a colon)
            rest = c.key.split(":", 2)[2]
            where = (rest.rpartition(":")[0].partition("@")[2] if c.origin == "heap"
                     else rest.split(":", 1)[0])
            c = replace(c, name=f"{c.name} ({where})")
        out.append(c)
    return out


def _instance_classes(col: Collected, symbols: RunSymbols,
                      intern: Callable[[LockClass], int]) -> np.ndarray:
    """Classes for locks with neither symbol nor allocation: instances taken at a
    common call site are one class (the code that takes them is the code that
    knows their type), found with a union-find over (instance, call site).
    The class of each pair, in the order of ``col.pair_base``."""
    order = np.lexsort((col.pair_ip, col.pair_addr))
    out = np.empty(len(order), dtype=np.int64)
    if not len(order):
        return out
    upairs = list(zip(col.pair_addr[order].tolist(), col.pair_ip[order].tolist(),
                      strict=True))
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    site_owner: dict[int, int] = {}
    for a, ip in upairs:
        o = site_owner.setdefault(ip, a)
        ra, ro = find(a), find(o)
        if ra != ro:
            parent[max(ra, ro)] = min(ra, ro)
    funcs: dict[int, dict[str, int]] = {}
    syms: list[Sym | None] = []
    for (a, ip), t, n in zip(upairs, col.pair_ts[order].tolist(),
                             col.pair_count[order].tolist(), strict=True):
        sym = symbols.lookup(ip, int(t))
        syms.append(sym)
        d = funcs.setdefault(find(a), {})
        fn = sym.name if sym else "?"
        d[fn] = d.get(fn, 0) + n
    for i, (a, _ip) in enumerate(upairs):
        root = find(a)
        fns = funcs[root]
        where = max(sorted(fns), key=lambda f: fns[f])
        sym = syms[i]
        out[order[i]] = intern(LockClass(
            f"lock@{where}", f"instance:{root:#x}", "instance",
            sym.module if sym else "vmlinux",
            f"no allocation or symbol known; instances taken at the same call sites, "
            f"mostly in {where}()", sig=f"instance@{where}"))
    return out
