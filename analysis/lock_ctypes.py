"""The C type of a spinning lock (``raw_spinlock_t``, ``spinlock_t``, ``rwlock_t``), from DWARF.

Without PREEMPT_RT, ``spin_lock()`` and ``raw_spin_lock()`` both call ``_raw_spin_lock``
(or inline the same code): the trace cannot tell the two apart.  Debug info can:

* the **call site**: ``spin_lock()``, ``spin_lock_bh()``, ``spin_lock_irq()``,
  ``spin_trylock()``… are inline functions taking a ``spinlock_t *``, so an acquisition
  whose DWARF inline chain holds one of them is of a ``spinlock_t``.  ``raw_spin_lock()``
  is a macro and ``spin_lock_irqsave()`` a macro around ``spinlock_check()``: no chain
  says "raw", and a missing chain says nothing;
* the **object**: a static lock is a variable, whose type is in the DWARF of every
  compilation unit that uses it (its definition, or an ``extern`` declaration); a heap
  lock's class is named ``struct type.member`` from the allocating code's DWARF
  (analysis.type_names), and that struct is defined in the unit that takes the lock.

``rwlock_t`` needs neither: ``read_lock()``/``write_lock()`` exist only for it.  A type
the evidence does not settle, or on which it disagrees, is None: the caller judges
nothing then.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from elftools.dwarf.die import DIE

from tracedep.analysis.type_names import _name, _ref, _size, _unqualified

log = logging.getLogger(__name__)

RAW = "raw_spinlock_t"
SPIN = "spinlock_t"
RWLOCK = "rwlock_t"

# the spinlock_t API that is an inline function of a spinlock_t * (include/linux/spinlock.h)
SPINLOCK_T_INLINES = frozenset({
    "spin_lock", "spin_lock_bh", "spin_lock_irq", "spin_trylock", "spin_trylock_bh",
    "spin_trylock_irq", "spin_unlock", "spin_unlock_bh", "spin_unlock_irq",
    "spin_unlock_irqrestore", "spinlock_check",
})
_TYPE_NAMES = {"raw_spinlock_t": RAW, "raw_spinlock": RAW, "spinlock_t": SPIN,
               "spinlock": SPIN, "rwlock_t": RWLOCK}
_HEAP_NAME = re.compile(r"^(struct|union) ([A-Za-z_]\w*)(\[\d*\])?\.(.+)$")
_STATIC_NAME = re.compile(r"^([A-Za-z_][\w.$]*)(?:\+(0x[0-9a-f]+))?$")

# (module, runtime code address, ts) -> the DWARF function DIEs holding it, outermost first
Scope = Callable[[str, int, int], list[Any]]


def ctype_of(t: DIE | None) -> str | None:
    """The lock type a DWARF type is (through typedefs and qualifiers), or None."""
    names, _ = _unqualified(t)
    got = {_TYPE_NAMES[n] for n in names if n in _TYPE_NAMES}
    return got.pop() if len(got) == 1 else None


def inline_api(scope: list[Any]) -> str | None:
    """``spinlock_t`` when an inlined function of the scope is the spinlock_t API."""
    for d in scope:
        if d.tag != "DW_TAG_inlined_subroutine":
            continue
        origin = _ref(d, "DW_AT_abstract_origin")
        if origin is not None and _name(origin) in SPINLOCK_T_INLINES:
            return SPIN
    return None


def _members(agg: DIE, name: str, depth: int = 0) -> list[tuple[DIE, int]]:
    """The members called ``name`` of ``agg``, through anonymous structs and unions
    (which add no name to a path), with their byte offsets."""
    out: list[tuple[DIE, int]] = []
    if depth > 6:
        return out
    for m in agg.iter_children():
        if m.tag != "DW_TAG_member" or "DW_AT_bit_size" in m.attributes:
            continue
        loc = m.attributes.get("DW_AT_data_member_location")
        off = int(loc.value) if loc is not None and isinstance(loc.value, int) else (
            0 if loc is None and agg.tag == "DW_TAG_union_type" else None)
        if off is None:
            continue
        if _name(m) == name:
            out.append((m, off))
        elif not _name(m):
            _, base = _unqualified(_ref(m, "DW_AT_type"))
            if base is not None and base.tag in ("DW_TAG_structure_type", "DW_TAG_union_type"):
                out += [(d, off + o) for d, o in _members(base, name, depth + 1)]
    return out


def member_type(agg: DIE, path: str) -> tuple[DIE | None, int | None]:
    """The type of member ``path`` (``a.b[].c``) of ``agg`` and its offset (None when an
    array index is folded away); (None, None) when the path is not there."""
    t: DIE | None = agg
    off: int | None = 0
    for seg in path.split("."):
        name, idx = (seg[:seg.index("[")], seg[seg.index("["):]) if "[" in seg else (seg, "")
        _, base = _unqualified(t)
        if base is None or base.tag not in ("DW_TAG_structure_type", "DW_TAG_union_type"):
            return None, None
        found = _members(base, name)
        if len(found) != 1:
            return None, None
        m, mo = found[0]
        t = _ref(m, "DW_AT_type")
        off = None if off is None else off + mo
        if idx:
            _, arr = _unqualified(t)
            if arr is None or arr.tag != "DW_TAG_array_type":
                return None, None
            t = _ref(arr, "DW_AT_type")
            digits = idx.strip("[]")
            es = _size(_unqualified(t)[1])
            off = off + int(digits) * es if digits and off is not None and es else None
    return t, off


@dataclass
class _Unit:
    """One compilation unit's top-level structs and variables, by name."""

    structs: dict[str, list[DIE]] = field(default_factory=dict)
    variables: dict[str, list[DIE]] = field(default_factory=dict)


@dataclass
class LockTypes:
    """The C type of the lock at acquisition rows, cached per class and call site."""

    scope: Scope
    _units: dict[tuple[int, int], _Unit] = field(default_factory=dict)
    failures: int = 0

    def _unit(self, die: DIE) -> _Unit:
        cu = die.cu
        key = (id(cu.dwarfinfo), cu.cu_offset)
        if key not in self._units:
            u = _Unit()
            for c in cu.get_top_DIE().iter_children():
                if c.tag in ("DW_TAG_structure_type", "DW_TAG_union_type") and _name(c) and \
                        "DW_AT_declaration" not in c.attributes:
                    u.structs.setdefault(_name(c), []).append(c)
                elif c.tag == "DW_TAG_variable" and _name(c):
                    u.variables.setdefault(_name(c), []).append(c)
            self._units[key] = u
        return self._units[key]

    def at_site(self, module: str, ip: int, ts: int) -> str | None:
        """What the call site's inline chain says (``spinlock_t`` or None)."""
        try:
            return inline_api(self.scope(module, ip, ts))
        except Exception as e:  # malformed DWARF: nothing known
            self.failures += 1
            log.debug("no scope at %s %#x: %s", module, ip, e)
            return None

    def of_object(self, class_key: str, class_name: str, module: str, ip: int,
                  ts: int) -> str | None:
        """The lock object's declared type, read in the unit that takes it at ``ip``."""
        try:
            scope = self.scope(module, ip, ts)
            if not scope:
                return None
            unit = self._unit(scope[0])
            if class_key.startswith("static:"):
                return self._static(unit, class_key.split(":", 2)[2])
            if class_key.startswith("heap:"):
                return self._heap(unit, class_key, class_name)
        except Exception as e:  # malformed DWARF: nothing known
            self.failures += 1
            log.debug("no type for %s at %s %#x: %s", class_name, module, ip, e)
        return None

    @staticmethod
    def _static(unit: _Unit, name: str) -> str | None:
        m = _STATIC_NAME.match(name)
        if m is None:
            return None
        var, off = m.group(1), int(m.group(2) or "0", 16)
        types = set()
        for v in unit.variables.get(var, []):
            t = _ref(v, "DW_AT_type") or _ref(_ref(v, "DW_AT_specification") or v, "DW_AT_type")
            if off == 0:
                types.add(ctype_of(t))
            else:
                types.add(None)  # a lock inside a static struct: not read (yet)
        return types.pop() if len(types) == 1 else None

    @staticmethod
    def _heap(unit: _Unit, key: str, name: str) -> str | None:
        m = _HEAP_NAME.match(name.split(" [")[0].split(" (")[0])
        if m is None:
            return None
        structs = unit.structs.get(m.group(2), [])
        kw = "DW_TAG_union_type" if m.group(1) == "union" else "DW_TAG_structure_type"
        types = set()
        for s in structs:
            if s.tag != kw:
                continue
            t, off = member_type(s, m.group(4))
            tail = key.rsplit(":", 1)[-1]
            if off is not None and not m.group(3) and tail.startswith("0x") and \
                    int(tail, 16) != off:
                return None  # the class's offset is not that member's: another struct
            types.add(ctype_of(t) if t is not None else None)
        return types.pop() if len(types) == 1 else None
