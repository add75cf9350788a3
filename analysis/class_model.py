"""What a lock class is (:class:`LockClass`) and how one is made from what the trace says.

The builders here turn one answer about a lock (its symbol, its initializer call, the
allocation that holds it) into a class; analysis.class_stream decides which answer
each lock event gets, analysis.class_table orders and names the whole table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tracedep.analysis.run_symbols import RunSymbols, Sym
from tracedep.analysis.type_names import fold_indices
from tracedep.tracer.lock_init import INODE_DIR_KEY_NAME, INODE_KEY_NAME
from tracedep.tracer.probes import api_name

SPINNING_LOCK_TYPES = ("spinlock", "rwlock-r", "rwlock-w")

# Allocation helpers whose call site says nothing about the object's type.
GENERIC_ALLOCATORS = frozenset({
    "devm_kmalloc", "kmemdup", "kstrdup", "krealloc", "kvmalloc_node", "kvmalloc",
    "__kmalloc_node_track_caller", "kmalloc_array", "kcalloc", "kvzalloc", "kvcalloc",
    "__kvmalloc_node", "mempool_alloc", "mempool_alloc_slab", "mempool_kmalloc",
    "kmemdup_nul", "alloc_netdev_mqs", "__alloc_skb", "__kmalloc_track_caller",
    # 6.10+ (api_name strips their _noprof)
    "kmalloc_node_track_caller", "krealloc_node", "kvrealloc", "kmemdup_array",
})


@dataclass(frozen=True)
class LockClass:
    name: str  # shown to users
    key: str  # stable across runs and KASLR: used in signatures
    # "static", "init" (an initializer's class), "heap", "instance", "lockdep" (named by
    # the kernel's lockdep)
    origin: str
    module: str  # where the lock is defined/allocated ("vmlinux" for the core kernel)
    detail: str = ""  # e.g. "offset 0x8 in a 64-byte object allocated at td_ring_alloc+0x1c"
    sig: str = ""  # the stable part of ``key`` (instances: who first took it, not where it is)


# (module, allocator's return address, ts, offset, object size, lock type) -> a name
ClassNamer = Callable[[str, int, int, int, int, str], str | None]


def static_class(sym: Sym) -> LockClass:
    """The class of a lock that lives in a symbol (``td_dev+0x10`` inside a struct)."""
    name = sym.name if sym.offset == 0 else f"{sym.name}+{sym.offset:#x}"
    key = f"static:{sym.module}:{name}"
    return LockClass(name, key, "static", sym.module, sig=key)


def heap_class(symbols: RunSymbols, namer: ClassNamer | None, ptr: int, size: int,
               alloc_ip: int, alloc_ts: int, a: int, ltype: str) -> LockClass | None:
    """The class of the lock at ``a`` inside the object of ``size`` bytes at ``ptr``
    that ``alloc_ip`` allocated at ``alloc_ts``; None when the allocation's call site
    says nothing of the object's type (a generic allocator)."""
    site = symbols.lookup(alloc_ip, alloc_ts)
    if site is None or api_name(site.name) in GENERIC_ALLOCATORS:
        return None
    off = a - ptr
    fn = symbols.source_function(alloc_ip, alloc_ts) or site.name
    typed = namer(site.module, alloc_ip, alloc_ts, off, size,
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
    loc = symbols.source_location(alloc_ip, alloc_ts)
    where = (f"{loc[0].rsplit('/', 1)[-1]}:{loc[1]}" if loc
             else f"{site.name}+{site.offset:#x}")
    key = f"heap:{site.module}:{fn}@{where}:" + (
        folded if folded and folded != typed else f"{off:#x}")
    return LockClass(
        name, key, "heap", site.module,
        f"at offset {off:#x} of a {size}-byte object allocated at {site}"
        + (f" ({loc[0]}:{loc[1]})" if loc else ""), sig=key)


def init_class(symbols: RunSymbols, site: Sym | None, ip: int, ts: int, func: str,
               name: str) -> LockClass | None:
    """lockdep's class of a lock its initializer ``func`` set up at ``ip`` (``site``)."""
    if site is None:
        return None  # a call site nobody can name: no stable key
    fn = symbols.source_function(ip, ts) or site.name
    shown = name or f"{fn}():{func}"
    key = f"init:{site.module}:{fn}:{shown}"
    return LockClass(shown, key, "init", site.module,
                     f"lockdep's class: initialized by {func}() at {site}", sig=key)


def rekey_class(symbols: RunSymbols, fstype: int, ts: int, fsname: str,
                dir_key: bool = False) -> LockClass | None:
    """The class an inode's ``i_rwsem`` takes from its file system type (tracer.lock_init)."""
    key = inode_key(symbols, fstype, ts, fsname)
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


def inode_key(symbols: RunSymbols, fstype: int, ts: int, fsname: str) -> str | None:
    """The class key of the inode locks of a file system type: its symbol (stable
    across runs and KASLR), else its name."""
    sym = symbols.lookup(fstype, ts) if fstype else None
    if sym is not None and sym.offset == 0:
        return f"init:{sym.module}:{sym.name}:{INODE_KEY_NAME}"
    if fsname:
        return f"init:vmlinux:fs:{fsname}:{INODE_KEY_NAME}"
    return None
