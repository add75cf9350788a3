"""Lock initializers seen so far, per lock address: the class a lock event there takes.

A lock event at an address takes the class of the latest initializer call there before
it (time stamp ≤ the event's) when its lock type is one that initializer sets up and
the object holding the address was not freed since (analysis.classes).  What decides
the next initializer's class is the previous one at the address (an inode's re-key and
``lockdep_annotate_inode_mutex_key``, tracer.lock_init), so each address keeps its
latest record and the function and task of its latest initializer row: one slot per
address ever initialized, whatever the number of events.

A record's end is the first free of the object that held the address when the
initializer ran (:class:`heap_state.HeapState` record ``jc``), or never (``jc`` = -1:
no object, or one already freed).  It is read from the heap record when needed, so a
free seen later ends it without touching this state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tracedep.analysis.class_model import LockClass, init_class, inode_key, rekey_class
from tracedep.analysis.heap_state import INF
from tracedep.analysis.run_symbols import RunSymbols
from tracedep.analysis.u64map import U64Map
from tracedep.analysis.window_cols import TextIds
from tracedep.tracer.lock_init import (
    DIR_REKEY,
    INODE_REKEY,
    LOCK_INITS,
    REKEY_TYPES,
    S_IFDIR,
    S_IFMT,
)

_FIELDS = ("has", "cand", "mask", "jc", "end", "func", "pid")


class Candidates:
    """Every class an answer produced, numbered: init records and memos keep the number."""

    def __init__(self) -> None:
        self._ids: dict[LockClass, int] = {}
        self.items: list[LockClass] = []

    def id(self, c: LockClass | None) -> int:
        if c is None:
            return -1
        i = self._ids.get(c)
        if i is None:
            i = self._ids[c] = len(self.items)
            self.items.append(c)
        return i


class TypeCodes(TextIds):
    """Lock type names as small integers, for bit masks of the types an init covers."""

    def code(self, name: str) -> int:
        i = self.id(name)
        self.check()
        return i

    def check(self) -> None:
        if len(self.names) > 63:
            raise ValueError("more than 63 lock types: a type mask is one int64")

    def mask(self, names: tuple[str, ...]) -> int:
        m = 0
        for n in names:
            m |= 1 << self.code(n)
        return m


@dataclass
class InitRows:
    """A window's lock_init rows, in row order (``jc``: the holding object's record)."""

    addr: np.ndarray
    ts: np.ndarray
    ip: np.ndarray
    pid: np.ndarray
    func: list[str]
    name: list[str]
    value: np.ndarray
    key: np.ndarray
    jc: np.ndarray


@dataclass
class InitRecords:
    """The records a window's init rows appended, in row order."""

    addr: np.ndarray
    ts: np.ndarray
    cand: np.ndarray
    mask: np.ndarray
    jc: np.ndarray


class InitState:
    def __init__(self, symbols: RunSymbols, cands: Candidates, types: TypeCodes) -> None:
        self.symbols = symbols
        self.cands = cands
        self.types = types
        self.slots = U64Map()
        self.n = 0
        self.cols = {f: np.zeros(1024, dtype=np.int64) for f in _FIELDS}
        self.funcs: list[str] = []
        self._func_ids: dict[str, int] = {}

    def __len__(self) -> int:
        return self.n

    def lookup(self, addrs: np.ndarray) -> dict[str, np.ndarray]:
        """The latest record at each address: ``has`` (0: none), ``cand``, ``mask``,
        and its end: the first free of record ``jc``, or ``end`` where ``jc`` is -1."""
        s = self.slots.get(addrs)
        ok = s >= 0
        out = {}
        for f, none in (("has", 0), ("cand", -1), ("mask", 0), ("jc", -1), ("end", INF)):
            v = np.full(len(addrs), none, dtype=np.int64)
            v[ok] = self.cols[f][s[ok]]
            out[f] = v
        return out

    def settle(self, freed: np.ndarray) -> None:
        """Records whose object was freed (``freed``: HeapState.freed) keep the time,
        not the heap record."""
        jc = self.cols["jc"][:self.n]
        done = jc >= 0
        done[done] = freed[jc[done]] != INF
        self.cols["end"][:self.n][done] = freed[jc[done]]
        jc[done] = -1

    def remap_records(self, remap: np.ndarray) -> None:
        """Heap records were renumbered (HeapState.compact)."""
        jc = self.cols["jc"][:self.n]
        jc[:] = remap[jc]

    def refs(self) -> np.ndarray:
        jc = self.cols["jc"][:self.n]
        return jc[jc >= 0]

    def process(self, rows: InitRows, freed: np.ndarray) -> InitRecords:
        """Run a window's init rows (``freed``: their holding records' first free)."""
        out: list[tuple[int, int, int, int, int]] = []
        slots = self._slots(rows.addr)
        c = self.cols
        for i in range(len(rows.ts)):
            s = slots[i]
            t, f, a = int(rows.ts[i]), rows.func[i], int(rows.addr[i])
            got = self._one(rows, i, s)
            c["func"][s], c["pid"][s] = self._func_id(f), int(rows.pid[i])
            if got is None:
                continue
            cand, mask = got
            jc = int(rows.jc[i])
            if jc >= 0 and int(freed[i]) < t:
                jc = -1  # the object was freed before the init: nothing ends the class
            c["has"][s], c["cand"][s], c["mask"][s], c["jc"][s] = 1, cand, mask, jc
            c["end"][s] = INF
            out.append((a, t, cand, mask, jc))
        arr = np.array([o[1:] for o in out], dtype=np.int64).reshape(-1, 4)
        return InitRecords(np.array([o[0] for o in out], dtype=np.uint64), arr[:, 0],
                           arr[:, 1], arr[:, 2], arr[:, 3])

    def _one(self, rows: InitRows, i: int, s: int) -> tuple[int, int] | None:
        """(class candidate, type mask) of init row ``i`` at slot ``s``; None: no record."""
        c = self.cols
        t, f = int(rows.ts[i]), rows.func[i]
        sym = self.symbols
        site = sym.lookup(int(rows.ip[i]), t)
        has = bool(c["has"][s])
        last = self.cands.items[int(c["cand"][s])] if has and c["cand"][s] >= 0 else None
        prev_f = self.funcs[int(c["func"][s])] if c["func"][s] >= 0 else None
        name, key = rows.name[i], int(rows.key[i])
        if f in DIR_REKEY:
            # lockdep_annotate_inode_mutex_key(): a directory whose lock still has
            # its fs type's i_mutex_key moves to i_mutex_dir_key; else no change
            if not (int(rows.value[i]) & S_IFMT == S_IFDIR and last is not None
                    and last.key == inode_key(sym, key, t, name)):
                return None
            cls = rekey_class(sym, key, t, name, dir_key=True)
            return self.cands.id(cls), self.types.mask(REKEY_TYPES[f])
        if f in INODE_REKEY:
            cls = rekey_class(sym, key, t, name)
            return self.cands.id(cls), self.types.mask(REKEY_TYPES[f])
        if (prev_f in INODE_REKEY and int(c["pid"][s]) == int(rows.pid[i])
                and site is not None and site.name == prev_f and has):
            # init_rwsem() then lockdep_set_class() in the re-keying function:
            # the re-key (probed at that function's entry, so seen first) wins
            return int(c["cand"][s]), int(c["mask"][s])
        cls = init_class(sym, site, int(rows.ip[i]), t, f, name)
        li = LOCK_INITS.get(f)
        return self.cands.id(cls), self.types.mask(li.lock_types if li else ())

    def _slots(self, addrs: np.ndarray) -> list[int]:
        """The slot of each address, new ones made (in order of first appearance)."""
        s = self.slots.get(addrs)
        new = np.unique(addrs[s < 0])
        if len(new):
            k = len(new)
            while self.n + k > len(self.cols["has"]):
                for f in _FIELDS:
                    self.cols[f] = np.concatenate([self.cols[f],
                                                   np.zeros_like(self.cols[f])])
            ids = np.arange(self.n, self.n + k)
            for f, none in (("has", 0), ("cand", -1), ("mask", 0), ("jc", -1), ("end", INF),
                            ("func", -1), ("pid", 0)):
                self.cols[f][ids] = none
            self.n += k
            self.slots.put(new, ids)
            s = self.slots.get(addrs)
        return s.tolist()

    def _func_id(self, f: str) -> int:
        i = self._func_ids.get(f)
        if i is None:
            i = self._func_ids[f] = len(self.funcs)
            self.funcs.append(f)
        return i
