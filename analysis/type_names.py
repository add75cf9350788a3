"""Readable names for heap lock classes: ``struct type.member`` from DWARF.

A lock in a heap object whose initializer names nothing (``spin_lock_init()`` is
inline on a kernel without ``CONFIG_DEBUG_SPINLOCK``: no call, no name) has a
class keyed by its allocation call site and offset (``analysis.classes``),
shown as ``nullb_alloc_dev():obj+0x8``.  Its type is in the DWARF of the code
that allocated it: the pointer variables, parameters and return type in scope at
the allocation call (the function and each function inlined into it there,
innermost first) point to structs, and the struct that fits the object names
the lock (``struct nullb_device.lock``, ``struct mm_struct.page_table_lock``):

* it is no larger than the allocated bytes (the allocator rounds up, never down);
* a lock of the kind acquired sits at exactly the lock's offset (a member path
  through nested structs, unions and arrays: ``struct proc_inode.vfs_inode.i_lock``).

The innermost scope with a fitting struct decides; within it the largest one
wins (an object allocated for a container, returned as a pointer to its
embedded member); two different structs of that size both fitting give no name.
A name is only shown: class keys and finding signatures do not change.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

from elftools.dwarf.die import DIE

log = logging.getLogger(__name__)

# the types that are a lock of each kind tracedep records (typedef and struct names)
_SPIN = frozenset({"spinlock_t", "spinlock", "raw_spinlock_t", "raw_spinlock"})
_RWSEM = frozenset({"rw_semaphore", "percpu_rw_semaphore"})
FAMILIES: dict[str, frozenset[str]] = {
    "spinlock": _SPIN,
    "rwlock-r": frozenset({"rwlock_t"}),
    "rwlock-w": frozenset({"rwlock_t"}),
    "mutex": frozenset({"mutex", "rt_mutex", "rt_mutex_base", "ww_mutex"}),
    "rwsem-r": _RWSEM,
    "rwsem-w": _RWSEM,
    "semaphore": frozenset({"semaphore"}),
    # the objects a task waits for (analysis.waits): named as locks are
    "work": frozenset({"work_struct", "delayed_work"}),
    "timer": frozenset({"timer_list"}),
    "completion": frozenset({"completion"}),
}
_QUALIFIERS = frozenset({"DW_TAG_typedef", "DW_TAG_const_type", "DW_TAG_volatile_type",
                         "DW_TAG_restrict_type", "DW_TAG_atomic_type"})
_AGGREGATES = frozenset({"DW_TAG_structure_type", "DW_TAG_union_type"})
_MAX_DEPTH = 8  # members nest a few levels; DWARF from a guest-built .ko is not trusted


def _ref(die: DIE, attr: str) -> DIE | None:
    if attr not in die.attributes:
        return None
    try:
        return die.get_DIE_from_attribute(attr)
    except Exception as e:  # a dangling reference: no type, not a crash
        log.debug("bad %s in DIE %#x: %s", attr, die.offset, e)
        return None


def _name(die: DIE) -> str:
    a = die.attributes.get("DW_AT_name")
    v = a.value if a is not None else b""
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _unqualified(t: DIE | None) -> tuple[frozenset[str], DIE | None]:
    """Every name on the typedef/qualifier chain of ``t``, and the type below it."""
    names: set[str] = set()
    for _ in range(16):
        if t is None:
            break
        if _name(t):
            names.add(_name(t))
        if t.tag not in _QUALIFIERS:
            break
        t = _ref(t, "DW_AT_type")
    return frozenset(names), t


def _size(t: DIE | None) -> int | None:
    if t is None:
        return None
    a = t.attributes.get("DW_AT_byte_size")
    if a is not None and isinstance(a.value, int):
        return int(a.value)
    if t.tag == "DW_TAG_array_type":
        n = 1
        for sub in t.iter_children():
            if sub.tag != "DW_TAG_subrange_type":
                continue
            cnt = sub.attributes.get("DW_AT_count")
            ub = sub.attributes.get("DW_AT_upper_bound")
            if cnt is not None and isinstance(cnt.value, int):
                n *= int(cnt.value)
            elif ub is not None and isinstance(ub.value, int):
                n *= int(ub.value) + 1
            else:
                return None  # a flexible array: no size
        es = _size(_unqualified(_ref(t, "DW_AT_type"))[1])
        return n * es if es is not None else None
    return None


def member_at(struct: DIE, off: int, family: frozenset[str], prefix: str = "",
              depth: int = 0) -> str | None:
    """The member path of a lock of ``family`` at byte ``off`` of ``struct``, or None."""
    if depth > _MAX_DEPTH:
        return None
    for m in struct.iter_children():
        if m.tag != "DW_TAG_member" or "DW_AT_bit_size" in m.attributes:
            continue
        loc = m.attributes.get("DW_AT_data_member_location")
        if loc is not None and isinstance(loc.value, int):
            mo = int(loc.value)
        elif loc is None and struct.tag == "DW_TAG_union_type":
            mo = 0
        else:
            continue
        names, base = _unqualified(_ref(m, "DW_AT_type"))
        size = _size(base)
        if base is None or size is None or not mo <= off < mo + size:
            continue
        mname = _name(m)
        path = f"{prefix}.{mname}" if prefix and mname else (mname or prefix)
        if off == mo and names & family:
            return path
        if base.tag in _AGGREGATES:
            got = member_at(base, off - mo, family, path, depth + 1)
            if got is not None:
                return got
        elif base.tag == "DW_TAG_array_type":
            enames, elem = _unqualified(_ref(base, "DW_AT_type"))
            es = _size(elem)
            if elem is None or not es:
                continue
            i, rem = divmod(off - mo, es)
            if rem == 0 and enames & family:
                return f"{path}[{i}]"
            if elem.tag in _AGGREGATES:
                got = member_at(elem, rem, family, f"{path}[{i}]", depth + 1)
                if got is not None:
                    return got
    return None


def _pointee(t: DIE | None) -> DIE | None:
    """The struct (or union) a pointer type points to, if it is defined here."""
    _, t = _unqualified(t)
    if t is None or t.tag != "DW_TAG_pointer_type":
        return None
    _, s = _unqualified(_ref(t, "DW_AT_type"))
    if s is None or s.tag not in _AGGREGATES or "DW_AT_declaration" in s.attributes:
        return None
    return s


def _typed(die: DIE) -> DIE | None:
    """The DW_AT_type of a variable, parameter or function, through its origins."""
    for _ in range(4):
        t = _ref(die, "DW_AT_type")
        if t is not None:
            return t
        nxt = _ref(die, "DW_AT_abstract_origin") or _ref(die, "DW_AT_specification")
        if nxt is None:
            return None
        die = nxt
    return None


def _scope_structs(level: DIE) -> list[DIE]:
    """Structs pointed to by one function level: its return type, its parameters and
    variables (those of its lexical blocks too, not of functions inlined into it)."""
    out: list[DIE] = []
    ret = _pointee(_typed(level))
    if ret is not None:
        out.append(ret)
    todo = [level]
    origin = _ref(level, "DW_AT_abstract_origin")
    if origin is not None:
        todo.append(origin)  # an inlined instance may omit what was optimized out
    seen: set[int] = set()
    while todo:
        d = todo.pop()
        for c in d.iter_children():
            if c.tag in ("DW_TAG_formal_parameter", "DW_TAG_variable"):
                s = _pointee(_typed(c))
                if s is not None and s.offset not in seen:
                    seen.add(s.offset)
                    out.append(s)
            elif c.tag == "DW_TAG_lexical_block":
                todo.append(c)
    return out


def name_in_scope(scope: list[DIE], off: int, size: int, lock_type: str) -> str | None:
    """``struct type.member`` for a lock at ``off`` of a ``size``-byte object allocated
    where ``scope`` (outermost function first, as DwarfIndex.scope_at) is in force."""
    family = FAMILIES.get(lock_type)
    if family is None or off < 0:
        return None
    for level in reversed(scope):
        fits: dict[int, list[tuple[str, str]]] = {}
        for s in _scope_structs(level):
            ssize = _size(s)
            if ssize is None or ssize > size or off >= ssize:
                continue
            path = member_at(s, off, family)
            if path is not None:
                kw = "union" if s.tag == "DW_TAG_union_type" else "struct"
                fits.setdefault(ssize, []).append((f"{kw} {_name(s) or '(anonymous)'}", path))
        if not fits:
            # an array of structs (kcalloc(n, sizeof(*x))): the element the lock is in,
            # of the largest struct in scope that fits twice (a smaller one would find
            # a lock at almost any offset)
            arrays = [(sz, s) for s in _scope_structs(level)
                      if (sz := _size(s)) and 2 * sz <= size]
            top = max((sz for sz, _ in arrays), default=0)
            for ssize, s in arrays:
                if ssize != top or off < ssize:
                    continue
                i, rem = divmod(off, ssize)
                path = member_at(s, rem, family)
                if path is not None:
                    kw = "union" if s.tag == "DW_TAG_union_type" else "struct"
                    fits.setdefault(ssize, []).append(
                        (f"{kw} {_name(s) or '(anonymous)'}[{i}]", path))
        if fits:
            best = fits[max(fits)]
            if len(set(best)) == 1:
                kind_name, path = best[0]
                return f"{kind_name}.{path}"
            return None
    return None


_INDEX = re.compile(r"\[\d+\]")


def fold_indices(name: str) -> str:
    """``struct mm_struct.rss_stat[2].lock`` → ``struct mm_struct.rss_stat[].lock``: the
    elements of an array of locks are one class, as lockdep's one init site makes them
    (a spin_lock_init() in a loop has one static key)."""
    return _INDEX.sub("[]", name)


@dataclass
class HeapNamer:
    """``namer(module, alloc_ip, ts, off, size, lock_type)`` → a name or None.

    ``scope(module, addr, ts)`` gives the DWARF scope at a code address (for the module
    load live at ``ts``).  ``alloc_ip`` is the allocator's return address: the call
    before it is looked up, then the return address itself.  Answers are remembered
    per call site, offset and kind."""

    scope: Callable[[str, int, int], list[DIE]]

    def __post_init__(self) -> None:
        self._memo: dict[tuple[str, int, int, int, str], str | None] = {}
        self.failures = 0

    def __call__(self, module: str, alloc_ip: int, ts: int, off: int, size: int,
                 lock_type: str) -> str | None:
        key = (module, alloc_ip, off, size, lock_type)
        if key not in self._memo:
            try:
                # the call instruction's scope, else the returning one's: GCC's inline
                # ranges sometimes leave the call itself to the outer function
                self._memo[key] = name_in_scope(self.scope(module, alloc_ip - 1, ts), off,
                                                size, lock_type) or \
                    name_in_scope(self.scope(module, alloc_ip, ts), off, size, lock_type)
            except Exception as e:  # malformed DWARF: the offset name stays
                self.failures += 1
                log.debug("no type name at %s %#x: %s", module, alloc_ip, e)
                self._memo[key] = None
        return self._memo[key]
