"""One window of the class stream: its allocations, frees and initializers go into the
causal state, and each lock row gets its answer (analysis.class_stream).

The answers, as classes.assign gives them, by time stamp (a row's own time stamp
included, whichever row comes first within it):

1. the address's symbol, looked up once, at the first row there (one per address);
2. else the latest initializer at the address, when the row's lock type is one it
   sets up and the object that held the address then is not freed yet;
3. else the latest allocation over the address, when not freed since (its class is
   memoised per allocation and offset, made with the lock type of its first row);
4. else an instance pair (address, call site) for the table to class at the end.

Answers that depend on this window's own allocations and initializers come from a
grouped as-of search (key: address index × time rank), so a window needs no Python
loop over its lock rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tracedep.analysis.class_bases import Bases
from tracedep.analysis.class_model import (
    SPINNING_LOCK_TYPES,
    ClassNamer,
    heap_class,
    static_class,
)
from tracedep.analysis.heap_state import INF, HeapState, expand
from tracedep.analysis.init_state import (
    Candidates,
    InitRecords,
    InitRows,
    InitState,
    TypeCodes,
)
from tracedep.analysis.run_symbols import RunSymbols
from tracedep.analysis.u64map import U64Map
from tracedep.analysis.window_cols import Cols

_U64 = np.uint64
_OFF_BITS = np.uint64(32)


@dataclass
class StreamState:
    """The causal state of the class stream (analysis.class_stream.ClassEngine)."""

    symbols: RunSymbols
    namer: ClassNamer | None
    cands: Candidates
    types: TypeCodes
    heap: HeapState
    inits: InitState
    bases: Bases
    spans: tuple[np.ndarray, np.ndarray]  # where symbols may be (class_stream._spans)
    static: U64Map  # lock address -> candidate of its symbol's class (-2: none)
    heap_memo: U64Map  # record << 32 | offset -> candidate (-1: no class)
    # what heap_class reads -> its candidate: the allocations of one call site, size and
    # load of its module name one class per offset and lock type, however many there are
    site_memo: dict[tuple[int, int, int, int, str], int] = field(default_factory=dict)


@dataclass
class LockRows:
    """A window's lock rows (``pos``: their rows in the whole frame)."""

    rows: np.ndarray
    addr: np.ndarray
    ts: np.ndarray
    ip: np.ndarray
    ltype: np.ndarray  # TypeCodes
    pos: np.ndarray
    spin: np.ndarray
    ua: np.ndarray  # the distinct addresses …
    first: np.ndarray  # … the first row at each …
    inv: np.ndarray  # … and which one each row's is

    @classmethod
    def of(cls, cols: Cols, rows: np.ndarray, ts: np.ndarray, row0: int,
           types: TypeCodes) -> LockRows:
        lt = types.of(cols, "lock_type", rows)
        types.check()
        spin_codes = np.array([types.code(s) for s in SPINNING_LOCK_TYPES])
        addr = cols.num("lock_addr")[rows].astype(_U64)
        ua, first, inv = np.unique(addr, return_index=True, return_inverse=True)
        return cls(rows, addr, ts[rows], cols.num("ip")[rows].astype(_U64), lt, row0 + rows,
                   np.isin(lt, spin_codes), ua, first, inv)


class _Cover:
    """The window's allocations over the window's lock and init addresses ``u``."""

    def __init__(self, heap: HeapState, recs: np.ndarray, u: np.ndarray,
                 times: np.ndarray) -> None:
        recs = recs[recs >= 0]
        self.span = len(times) + 1
        w, ui = expand(np.searchsorted(u, heap.ptr[recs]), np.searchsorted(u, heap.end[recs]))
        r = recs[w]
        o = np.lexsort((heap.row[r], heap.ptr[r], heap.ts[r], ui))
        self.u, self.rec = ui[o], r[o]
        self.key = self.u * self.span + np.searchsorted(times, heap.ts[self.rec])

    def latest(self, u: np.ndarray, rank: np.ndarray, lowest: bool = False) -> np.ndarray:
        """The allocation latest over ``u`` at time rank ``rank`` (a tie: the highest
        pointer, then row; ``lowest``: the lowest), -1 where none."""
        out = np.full(len(u), -1, dtype=np.int64)
        if not len(self.key):
            return out
        i = np.searchsorted(self.key, u * self.span + rank, side="right") - 1
        ok = i >= 0
        ok[ok] = self.u[i[ok]] == u[ok]
        if lowest:
            i[ok] = np.searchsorted(self.key, self.key[i[ok]], side="left")
        out[ok] = self.rec[i[ok]]
        return out


def classify(eng: StreamState, cols: Cols, ts: np.ndarray, row0: int,
             lr: LockRows) -> np.ndarray:
    """Apply the window to the state and give each lock row its base slot."""
    heap = eng.heap
    times = ts[np.concatenate([[True], ts[1:] != ts[:-1]])]
    ptr = cols.num("ptr")
    nbytes = cols.num("bytes")
    ip = cols.num("ip")
    a_rows = np.nonzero(cols.is_("kind", "alloc") & (ptr != 0) & (nbytes > 0))[0]
    recs = heap.add(ptr[a_rows], nbytes[a_rows], ts[a_rows], ip[a_rows], row0 + a_rows)
    f_rows = np.nonzero(cols.is_("kind", "free"))[0]
    heap.apply_frees(ptr[f_rows], ts[f_rows], recs, times)
    i_rows = np.nonzero(cols.is_("kind", "lock_init"))[0]
    b = np.zeros(0, dtype=np.int64)
    if len(lr.rows) or len(i_rows):
        i_addr = cols.num("lock_addr")[i_rows].astype(_U64)
        u = np.union1d(lr.ua, i_addr) if len(i_rows) else lr.ua
        own0, tmin0 = heap.owners(u)
        snap = eng.inits.lookup(u)
        cover = _Cover(heap, recs, u, times)
        irecs = _inits(eng, cols, i_rows, i_addr, ts, u, times, cover, tmin0)
        if len(lr.rows):
            b = _answers(eng, lr, u, times, own0, cover, irecs, snap)
    heap.paint(recs)
    if heap.due():
        compact(eng)
    return (b << 1) | lr.spin.astype(np.int64)


def _answers(eng: StreamState, lr: LockRows, u: np.ndarray, times: np.ndarray,
             own0: np.ndarray, cover: _Cover, irecs: InitRecords,
             snap: dict[str, np.ndarray]) -> np.ndarray:
    """The base of each lock row: its symbol's, initializer's or allocation's class,
    else its instance pair's."""
    lu = lr.inv if u is lr.ua else np.searchsorted(u, lr.addr)
    rank = np.searchsorted(times, lr.ts)
    cand = _static(eng, lr)
    todo = cand < 0
    cand[todo] = -1
    got = _init_answer(eng, lr, lu, rank, u, times, irecs, snap, todo)
    cand[todo] = got[todo]
    todo &= got < 0
    cand[todo] = _heap_answer(eng, lr, todo, lu, rank, cover, own0)
    b = eng.bases.of_cands(cand)
    rest = b < 0
    if rest.any():
        b[rest] = eng.bases.of_pairs(lr.addr[rest], lr.ip[rest], lr.ts[rest])
    return b


def _static(eng: StreamState, lr: LockRows) -> np.ndarray:
    """Per lock row: the candidate of its address's symbol's class, -2 where the
    address has no symbol (decided at its first row), -1 outside every symbol span."""
    ua, first, inv = lr.ua, lr.first, lr.inv
    lo, hi = eng.spans
    i = np.searchsorted(lo, ua, side="right") - 1
    inside = i >= 0
    inside[inside] = ua[inside] < hi[i[inside]]
    per = np.full(len(ua), -1, dtype=np.int64)
    memo = eng.static.get(ua[inside], -3)
    new = np.nonzero(memo == -3)[0]
    if len(new):
        idx = np.nonzero(inside)[0][new]
        made = []
        for k in idx.tolist():
            sym = eng.symbols.lookup(int(ua[k]), int(lr.ts[first[k]]))
            made.append(eng.cands.id(static_class(sym)) if sym is not None else -2)
        memo[new] = made
        eng.static.put(ua[idx], np.array(made, dtype=np.int64))
        hit = np.array(made) >= 0
        n = int(hit.sum())
        eng.bases.meet(np.array(made, dtype=np.int64)[hit],
                       (ua[idx][hit], np.zeros(n, np.int64), np.zeros(n, np.int64),
                        np.zeros(n, _U64), np.zeros(n, np.int64)))
    per[inside] = memo
    return per[inv]


def _inits(eng: StreamState, cols: Cols, i_rows: np.ndarray, i_addr: np.ndarray,
           ts: np.ndarray, u: np.ndarray, times: np.ndarray, cover: _Cover,
           tmin0: np.ndarray) -> InitRecords:
    """The window's initializer rows into the init state; the records they appended."""
    if not len(i_rows):
        z = np.zeros(0, dtype=np.int64)
        return InitRecords(np.zeros(0, dtype=_U64), z, z, z, z)
    t = ts[i_rows]
    iu = np.searchsorted(u, i_addr)
    jc = cover.latest(iu, np.searchsorted(times, t), lowest=True)
    jc = np.where(jc >= 0, jc, tmin0[iu])
    freed = np.where(jc >= 0, eng.heap.freed[jc], INF)
    rows = InitRows(i_addr, t, cols.num("ip")[i_rows], cols.num("pid")[i_rows],
                    cols.texts("func", i_rows), cols.texts("lock_name", i_rows),
                    cols.num("value")[i_rows],
                    cols.num("key_addr")[i_rows] if cols.has("key_addr")
                    else np.zeros(len(i_rows), dtype=_U64), jc)
    return eng.inits.process(rows, freed)


def _init_answer(eng: StreamState, lr: LockRows, lu: np.ndarray, rank: np.ndarray,
                 u: np.ndarray, times: np.ndarray, irecs: InitRecords,
                 snap: dict[str, np.ndarray], todo: np.ndarray) -> np.ndarray:
    """Per lock row: its latest initializer's class candidate, -1 where none holds."""
    has, cand = snap["has"][lu], snap["cand"][lu]
    mask, jc, end = snap["mask"][lu], snap["jc"][lu], snap["end"][lu]
    if len(irecs.ts):
        span = len(times) + 1
        wu = np.searchsorted(u, irecs.addr)
        wk = wu * span + np.searchsorted(times, irecs.ts)
        o = np.argsort(wk, kind="stable")
        wk, wu = wk[o], wu[o]
        i = np.searchsorted(wk, lu * span + rank, side="right") - 1
        ok = i >= 0
        ok[ok] = wu[i[ok]] == lu[ok]
        j = o[i[ok]]
        has, cand, mask, jc, end = has.copy(), cand.copy(), mask.copy(), jc.copy(), end.copy()
        has[ok], cand[ok], mask[ok], jc[ok] = 1, irecs.cand[j], irecs.mask[j], irecs.jc[j]
        end[ok] = INF
    end[jc >= 0] = eng.heap.freed[jc[jc >= 0]]
    hit = todo & (has > 0) & (cand >= 0) & (lr.ts < end) & (((mask >> lr.ltype) & 1) == 1)
    out = np.where(hit, cand, -1)
    if hit.any():
        k = int(hit.sum())
        eng.bases.meet(cand[hit], (lr.addr[hit], np.ones(k, np.int64), lr.pos[hit],
                                   np.zeros(k, _U64), np.zeros(k, np.int64)))
    return out


def _heap_answer(eng: StreamState, lr: LockRows, todo: np.ndarray, lu: np.ndarray,
                 rank: np.ndarray, cover: _Cover, own0: np.ndarray) -> np.ndarray:
    """For the rows ``todo``: the class candidate of the allocation latest over the
    address, -1 where there is none, it has no class or it was freed since."""
    heap = eng.heap
    sel = np.nonzero(todo)[0]
    j = cover.latest(lu[sel], rank[sel])
    j = np.where(j >= 0, j, own0[lu[sel]])
    out = np.full(len(sel), -1, dtype=np.int64)
    has = j >= 0
    if not has.any():
        return out
    rows, jj = sel[has], j[has]
    off = lr.addr[rows] - heap.ptr[jj]
    got = _memo(eng, rows, jj, off, lr)
    live = heap.freed[jj] >= lr.ts[rows]
    out[has] = np.where(live, got, -1)
    return out


def _memo(eng: StreamState, rows: np.ndarray, j: np.ndarray, off: np.ndarray,
          lr: LockRows) -> np.ndarray:
    """The class candidate of each (allocation, offset), made at its first row."""
    heap = eng.heap
    small = off < (np.uint64(1) << _OFF_BITS)
    if not small.all():
        raise ValueError("a lock more than 4 GiB into its allocation")
    key = (j.astype(_U64) << _OFF_BITS) | off
    got = eng.heap_memo.get(key, -3)
    new = got == -3
    if new.any():
        nk, first = np.unique(key[new], return_index=True)
        at = np.nonzero(new)[0][first]
        names = eng.types.names
        made = []
        for k in at.tolist():
            r, jj = int(rows[k]), int(j[k])
            p, ip, ts = int(heap.ptr[jj]), int(heap.ip[jj]), int(heap.ts[jj])
            size, a, lt = int(heap.end[jj]) - p, int(lr.addr[r]), names[int(lr.ltype[r])]
            # heap_class reads the allocation's time only through its module's load
            site = (ip, eng.symbols.epoch(ip, ts), size, a - p, lt)
            made_id = eng.site_memo.get(site)
            if made_id is None:
                made_id = eng.site_memo[site] = eng.cands.id(
                    heap_class(eng.symbols, eng.namer, p, size, ip, ts, a, lt))
            made.append(made_id)
        mk = np.array(made, dtype=np.int64)
        eng.heap_memo.put(nk, mk)
        hit = mk >= 0
        jh = j[at][hit]
        eng.bases.meet(mk[hit], (lr.addr[rows[at]][hit], np.full(int(hit.sum()), 2),
                                 heap.ts[jh], heap.ptr[jh], heap.row[jh]))
        got = eng.heap_memo.get(key, -3)
    return got


def compact(eng: StreamState) -> None:
    """Drop the heap records nothing refers to; renumber the references."""
    eng.inits.settle(eng.heap.freed)
    remap = eng.heap.compact(eng.inits.refs())
    eng.inits.remap_records(remap)
    k, v = eng.heap_memo.items()
    nj = remap[(k >> _OFF_BITS).astype(np.int64)]
    keep = nj >= 0
    nk = (np.maximum(nj, 0).astype(_U64) << _OFF_BITS) | (k & np.uint64(0xFFFFFFFF))
    eng.heap_memo.filter(keep, nk, v)
