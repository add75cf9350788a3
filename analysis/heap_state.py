"""The kernel heap as the trace has shown it so far: which allocation is the latest to
cover each address, and when each allocation was first freed.

analysis.classes gives a heap lock the class of the *latest* allocation that covered its
address before the event (ties on the time stamp: the highest pointer, then the latest
row), and none at all when that allocation was freed in between: an older allocation
under a freed one never answers.  So the state is a map of disjoint address segments,
each owned by the latest allocation over it, freed or not (a freed owner is a "dead
marker": it keeps the older ones hidden).  An allocation painted over entirely by later
ones leaves the map; its record is dropped by :meth:`HeapState.compact` once nothing
else refers to it.  What is kept grows with the memory the trace has touched and the
objects still live, not with events.

Records: one per allocation event (``ptr`` ≠ 0, ``bytes`` > 0), numbered as they come;
``freed`` is the time of the first free of ``ptr`` after the allocation (``INF`` while
none is seen).  A free at the allocation's own time stamp does not count, as in
classes' whole-trace reading.  Each segment also keeps ``tmin``: of the allocations
with the owner's time stamp over it, the one with the lowest pointer (then row), which
is what the initializer's "containing object" takes on such a tie.
"""

from __future__ import annotations

import numpy as np

from tracedep.analysis.u64map import U64Map

INF = int(np.iinfo(np.int64).max)
_U64 = np.uint64
_COLS = ("ptr", "end", "ts", "ip", "row", "freed", "prev")  # a record's


def expand(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For ranges ``lo[i]:hi[i]``: (which range, each index in it), concatenated."""
    n: np.ndarray = np.maximum(hi - lo, 0)
    which = np.repeat(np.arange(len(lo)), n)
    if not len(which):
        return which, which.copy()
    starts = np.cumsum(n) - n
    return which, lo[which] + (np.arange(len(which)) - starts[which])


class HeapState:
    def __init__(self) -> None:
        self.n = 0
        self.cap = 1024
        self.ptr: np.ndarray = np.zeros(self.cap, dtype=_U64)
        self.end: np.ndarray = np.zeros(self.cap, dtype=_U64)
        self.ts: np.ndarray = np.zeros(self.cap, dtype=np.int64)
        self.ip: np.ndarray = np.zeros(self.cap, dtype=_U64)
        self.row: np.ndarray = np.zeros(self.cap, dtype=np.int64)
        self.freed: np.ndarray = np.zeros(self.cap, dtype=np.int64)
        self.prev: np.ndarray = np.zeros(self.cap, dtype=np.int64)
        self.s_start: np.ndarray = np.zeros(0, dtype=_U64)
        self.s_end: np.ndarray = np.zeros(0, dtype=_U64)
        self.s_own: np.ndarray = np.zeros(0, dtype=np.int64)
        self.s_tmin: np.ndarray = np.zeros(0, dtype=np.int64)
        self.pend_head = U64Map()  # ptr -> newest record at it not freed yet (-1: none)
        self.alive_at_compact = 0

    # -- records -------------------------------------------------------------------

    def add(self, ptr: np.ndarray, size: np.ndarray, ts: np.ndarray, ip: np.ndarray,
            row: np.ndarray) -> np.ndarray:
        """Records for allocations in time order; their ids (-1 for one that covers
        nothing: its end wraps past 2**64)."""
        ptr = ptr.astype(_U64)
        end = ptr + size.astype(_U64)
        ok = end > ptr
        k = int(ok.sum())
        ids = np.full(len(ptr), -1, dtype=np.int64)
        if not k:
            return ids
        while self.n + k > self.cap:
            self.cap *= 2
            for name in _COLS:
                a = getattr(self, name)
                b = np.zeros(self.cap, dtype=a.dtype)
                b[:self.n] = a[:self.n]
                setattr(self, name, b)
        new = np.arange(self.n, self.n + k)
        ids[ok] = new
        sl = slice(self.n, self.n + k)
        self.ptr[sl], self.end[sl], self.ts[sl] = ptr[ok], end[ok], ts[ok]
        self.ip[sl], self.row[sl] = ip[ok].astype(_U64), row[ok]
        self.freed[sl] = INF
        self.prev[sl] = -1
        self.n += k
        return ids

    def apply_frees(self, fptr: np.ndarray, fts: np.ndarray, new: np.ndarray,
                    times: np.ndarray) -> None:
        """A window's frees (any order) and its new records ``new``: each pending
        record at a freed pointer takes the first free after its own time stamp;
        the new ones still pending join their pointer's chain.  ``times``: the
        window's distinct time stamps, sorted (all earlier records are older)."""
        new = new[new >= 0]
        if not len(fptr) and not len(new):
            return
        fptr = fptr.astype(_U64)
        uf = np.unique(fptr)
        heads = self.pend_head.get(uf)
        chain = [new]
        cur = heads[heads >= 0]
        while len(cur):  # the older pending records at those pointers: few
            chain.append(cur)
            cur = self.prev[cur]
            cur = cur[cur >= 0]
        c = np.concatenate(chain)
        g_c = np.searchsorted(uf, self.ptr[c])
        g_c[g_c == len(uf)] = 0
        mine = (uf[g_c] == self.ptr[c]) if len(uf) else np.zeros(len(c), dtype=bool)
        c, g_c = c[mine], g_c[mine]
        if len(c):
            # time keys: a free's 2 × its rank, a record's 2 × (rank + 1) - 1, so that
            # a free follows a record exactly when its time stamp is later
            span = 2 * len(times) + 2
            kf = np.searchsorted(uf, fptr) * span + 2 * np.searchsorted(times, fts) + 1
            order = np.argsort(kf, kind="stable")
            kf, fsorted = kf[order], fts[order]
            kc = 2 * np.searchsorted(times, self.ts[c], side="right")
            i = np.searchsorted(kf, g_c * span + kc, side="right")
            ok = i < len(kf)
            ok[ok] = (kf[i[ok]] // span) == g_c[ok]
            self.freed[c[ok]] = fsorted[i[ok]]
            # an old chain's pending records are its newest: cut it where they end
            prev = self.prev[c]  # -1 for the new ones: not linked yet
            cut = (self.freed[c] == INF) & (prev >= 0)
            cut[cut] = self.freed[prev[cut]] != INF
            self.prev[c[cut]] = -1
            gone = heads >= 0
            gone[gone] = self.freed[heads[gone]] != INF
            self.pend_head.put(uf[gone], np.full(int(gone.sum()), -1))
        self._link(new[self.freed[new] == INF])

    def _link(self, recs: np.ndarray) -> None:
        """Put new pending records (in time order) on their pointers' chains."""
        if not len(recs):
            return
        order = np.argsort(self.ptr[recs], kind="stable")
        p, r = self.ptr[recs][order], recs[order]
        first = np.ones(len(r), dtype=bool)
        first[1:] = p[1:] != p[:-1]
        prev = np.empty(len(r), dtype=np.int64)
        prev[~first] = r[np.nonzero(~first)[0] - 1]
        prev[first] = self.pend_head.get(p[first])
        self.prev[r] = prev
        last = np.ones(len(r), dtype=bool)
        last[:-1] = p[1:] != p[:-1]
        self.pend_head.put(p[last], r[last])

    # -- the segment map -----------------------------------------------------------

    def owners(self, addrs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each address: the latest allocation over it and, of those with its time
        stamp, the lowest (-1, -1: none)."""
        addrs = addrs.astype(_U64)
        i = np.searchsorted(self.s_start, addrs, side="right") - 1
        ok = i >= 0
        ok[ok] = self.s_end[i[ok]] > addrs[ok]
        own = np.full(len(addrs), -1, dtype=np.int64)
        tmin = own.copy()
        own[ok], tmin[ok] = self.s_own[i[ok]], self.s_tmin[i[ok]]
        return own, tmin

    def paint(self, recs: np.ndarray) -> None:
        """Put records (all later than any in the map) over the map."""
        recs = recs[recs >= 0]
        if not len(recs):
            return
        p, e = self.ptr[recs], self.end[recs]
        order = np.lexsort((self.row[recs], self.ptr[recs], self.ts[recs]))
        by_prio = recs[order]
        prank = np.empty(len(recs), dtype=np.int64)
        prank[order] = np.arange(len(recs))
        b = np.unique(np.concatenate([p, e]))
        w, idx = expand(np.searchsorted(b, p), np.searchsorted(b, e))
        best = np.full(len(b) - 1, -1, dtype=np.int64)
        np.maximum.at(best, idx, prank[w])
        cov = np.nonzero(best >= 0)[0]
        tmin = np.full(len(b) - 1, len(recs), dtype=np.int64)
        same = self.ts[recs[w]] == self.ts[by_prio[best[idx]]]
        np.minimum.at(tmin, idx[same], prank[w[same]])
        own_n, tmin_n = by_prio[best[cov]], by_prio[tmin[cov]]
        # merge neighbours with one owner
        keep = np.ones(len(cov), dtype=bool)
        keep[1:] = ~((cov[1:] == cov[:-1] + 1) & (own_n[1:] == own_n[:-1])
                     & (tmin_n[1:] == tmin_n[:-1]))
        starts = np.nonzero(keep)[0]
        ends = np.append(starts[1:], len(cov)) - 1
        new_s, new_e = b[cov[starts]], b[cov[ends] + 1]
        self._splice(new_s, new_e, own_n[starts], tmin_n[starts], b, cov)

    def _splice(self, ns: np.ndarray, ne: np.ndarray, no: np.ndarray, nt: np.ndarray,
                b: np.ndarray, cov: np.ndarray) -> None:
        """Replace what the covered elementary intervals ``cov`` of ``b`` hide."""
        run = np.ones(len(cov), dtype=bool)
        run[1:] = cov[1:] != cov[:-1] + 1
        rs = np.nonzero(run)[0]
        re_ = np.append(rs[1:], len(cov)) - 1
        cs, ce = b[cov[rs]], b[cov[re_] + 1]
        ss, se = self.s_start, self.s_end
        klo = np.searchsorted(ce, ss, side="right")
        khi = np.searchsorted(cs, se, side="left")
        hit = klo < khi
        if hit.any():
            j = np.nonzero(hit)[0]
            lo, hi = klo[j], khi[j]
            parts = [(j[ss[j] < cs[lo]], ss[j][ss[j] < cs[lo]], cs[lo][ss[j] < cs[lo]])]
            tail = ce[hi - 1] < se[j]
            parts.append((j[tail], ce[hi - 1][tail], se[j][tail]))
            gj, gk = expand(lo, hi - 1)
            parts.append((j[gj], ce[gk], cs[gk + 1]))
            pj = np.concatenate([x[0] for x in parts])
            ps = np.concatenate([x[1] for x in parts])
            pe = np.concatenate([x[2] for x in parts])
            ns, ne = np.concatenate([ns, ps]), np.concatenate([ne, pe])
            no = np.concatenate([no, self.s_own[pj]])
            nt = np.concatenate([nt, self.s_tmin[pj]])
        o = np.argsort(ns, kind="stable")
        ns, ne, no, nt = ns[o], ne[o], no[o], nt[o]
        keep = ~hit
        ks = ss[keep]
        at = np.searchsorted(ks, ns) + np.arange(len(ns))
        total = len(ks) + len(ns)
        mask = np.ones(total, dtype=bool)
        mask[at] = False
        out = []
        for old, new, dt in ((ks, ns, _U64), (se[keep], ne, _U64),
                             (self.s_own[keep], no, np.int64),
                             (self.s_tmin[keep], nt, np.int64)):
            arr = np.empty(total, dtype=dt)
            arr[mask], arr[at] = old, new
            out.append(arr)
        self.s_start, self.s_end, self.s_own, self.s_tmin = out

    # -- forgetting ----------------------------------------------------------------

    def due(self) -> bool:
        return self.n > max(1 << 16, 2 * self.alive_at_compact)

    def compact(self, refs: np.ndarray) -> np.ndarray:
        """Keep the records the map or ``refs`` name; the old id -> new id (-1: dropped)."""
        used = np.concatenate([self.s_own, self.s_tmin, refs])
        alive = np.unique(used[used >= 0])
        remap = np.full(self.n + 1, -1, dtype=np.int64)  # remap[-1] = -1
        remap[alive] = np.arange(len(alive))
        for name in _COLS:
            a = getattr(self, name)
            b = np.zeros(max(1024, 2 * len(alive)), dtype=a.dtype)
            b[:len(alive)] = a[alive]
            setattr(self, name, b)
        self.cap = len(self.ptr)
        self.n = len(alive)
        self.alive_at_compact = self.n
        self.s_own, self.s_tmin = remap[self.s_own], remap[self.s_tmin]
        # pending chains again, over the records kept
        pend = np.nonzero(self.freed[:self.n] == INF)[0]
        o = pend[np.lexsort((self.row[pend], self.ts[pend], self.ptr[pend]))]
        p = self.ptr[o]
        self.prev[:self.n] = -1
        same = np.zeros(len(o), dtype=bool)
        same[1:] = p[1:] == p[:-1]
        self.prev[o[same]] = o[np.nonzero(same)[0] - 1]
        last = np.ones(len(o), dtype=bool)
        last[:-1] = ~same[1:]
        self.pend_head = U64Map()
        self.pend_head.put(p[last], o[last])
        return remap
