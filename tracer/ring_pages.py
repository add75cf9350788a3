"""Walk binary ftrace ring-buffer pages (``trace_pipe_raw``): where each record is.

Page layout (``events/header_page``): a u64 timestamp, a ``commit`` word whose
low bits give the data length (bit 31: events were lost before this page; bit 30:
their count is stored after the data), then the data.  Each record starts with a
u32: 5-bit ``type_len`` and 27-bit time delta (0: length in the next u32;
1–28: length/4; 29: padding; 30: time extend; 31: absolute time stamp).

The walk over records is sequential by nature: it runs in C
(tracer/native/ringwalk.c) where a compiler is at hand, else in Python, check for
check the same.  Each page gets a verdict (``PAGE_*``); :func:`page_gaps` turns
the pages not read whole into the places where events are missing.
"""

from __future__ import annotations

import ctypes
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tracedep.common import native
from tracedep.errors import TraceFormatError
from tracedep.tracer.ftrace_formats import PageHeader

RB_MISSED_EVENTS = 1 << 31
RB_MISSED_STORED = 1 << 30

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


@dataclass
class RawRecords:
    """Where each data record is: parallel arrays over all CPUs."""

    cpu: list[int] = field(default_factory=list)
    ts: list[int] = field(default_factory=list)
    off: list[int] = field(default_factory=list)  # offset of the record's payload in buf
    length: list[int] = field(default_factory=list)
    torn_pages: int = 0
    backwards_pages: int = 0  # pages whose time does not fit their neighbours' (dropped)
    missed_events: int = 0
    missed_unknown_pages: int = 0
    # arrays from the native walker: (cpu, ts, off, length) per buffer
    chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = field(
        default_factory=list)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        parts = list(self.chunks)
        if self.ts:
            parts.append((np.asarray(self.cpu, np.int16), np.asarray(self.ts, np.int64),
                          np.asarray(self.off, np.int64), np.asarray(self.length, np.int32)))
        if not parts:
            z = np.zeros(0, np.int64)
            return z.astype(np.int16), z, z, z.astype(np.int32)
        return tuple(np.concatenate([p[i] for p in parts]) for i in range(4))  # type: ignore


@dataclass
class CpuCursor:
    """Where the walk of one CPU's pages stands between batches of them
    (tracer.decode_stream): the batches then give the verdicts one walk would."""

    prev_ts: int = 0  # the time stamp of the last page accepted (0: none yet)
    lookahead: bytes = b""  # the page after the batch: looked at, not walked


_TS_MAX = (1 << 63) - 1  # ts_ns is an int64 column; a later time is damage


# page verdict bits, as tracer/native/ringwalk.c sets them
PAGE_TORN, PAGE_BACKWARDS, PAGE_MISSED_BEFORE, PAGE_DAMAGED = 1, 2, 4, 8


# long: the record loop of ringwalk.c, check for check; a call per record would slow it
def walk_pages(buf: bytes, base: int, cpu: int, hp: PageHeader, out: RawRecords,
               status: np.ndarray | None = None, cursor: CpuCursor | None = None) -> None:
    """Append the records of every page in ``buf`` (offsets shifted by ``base``).

    The same walk as tracer/native/ringwalk.c, check for check: every offset and
    length read from a page is checked against that page; a page failing one is
    torn (its remaining records dropped), a page whose time stamp does not fit
    between its neighbours' is counted as going backwards and dropped.
    ``cursor``: where a walk in batches stands (:class:`CpuCursor`); ``buf`` then
    ends with its look-ahead page, which is looked at, not walked."""
    psize = hp.page_size
    dstart = hp.data_offset
    u32 = _U32.unpack_from
    u64 = _U64.unpack_from
    ts_l, off_l, len_l = out.ts, out.off, out.length
    n_before = len(ts_l)
    prev_page_ts = cursor.prev_ts if cursor else 0
    walk_len = len(buf) - len(cursor.lookahead) if cursor else len(buf)
    if status is None:
        status = np.zeros(walk_len // psize, np.int8)
    for page in range(0, walk_len - psize + 1, psize):
        page_end = page + psize
        pi = page // psize
        if status[pi] & PAGE_DAMAGED:
            continue
        status[pi] = 0
        ts = u64(buf, page)[0]
        commit = u64(buf, page + hp.commit_offset)[0] if hp.commit_size == 8 else u32(
            buf, page + hp.commit_offset)[0]
        length = commit & 0x3FFFFFFF
        if length > hp.data_size or ts > _TS_MAX:
            out.torn_pages += 1  # a ringbuf transport overwrote part of this page
            status[pi] = PAGE_TORN
            continue
        if prev_page_ts and ts < prev_page_ts:
            out.backwards_pages += 1
            status[pi] = PAGE_BACKWARDS
            continue
        if page_end + psize <= len(buf):
            nxt = u64(buf, page_end)[0]
            if 0 < nxt < ts and nxt >= prev_page_ts:  # this page claims a later time
                out.backwards_pages += 1
                status[pi] = PAGE_BACKWARDS
                continue
        prev_page_ts = ts
        pos = page + dstart
        end = pos + length
        if commit & RB_MISSED_EVENTS:
            if commit & RB_MISSED_STORED and end + 8 <= page_end:
                out.missed_events += u64(buf, end)[0]
            else:
                out.missed_unknown_pages += 1
            status[pi] |= PAGE_MISSED_BEFORE
        torn = False
        while pos < end:
            if pos + 4 > end:
                torn = True
                break
            hdr = u32(buf, pos)[0]
            tl = hdr & 31
            delta = hdr >> 5
            if tl <= 28:
                if tl == 0:
                    if pos + 8 > end:
                        torn = True
                        break
                    rlen = u32(buf, pos + 4)[0]
                    if rlen < 4 or rlen > end - pos - 4:
                        torn = True
                        break
                    dpos, dlen, adv = pos + 8, rlen - 4, 4 + rlen
                else:
                    dpos, dlen, adv = pos + 4, tl * 4, 4 + tl * 4
                if dpos + dlen > end:
                    torn = True
                    break
                ts += delta
                if ts > _TS_MAX:
                    torn = True
                    break
                ts_l.append(ts)
                off_l.append(base + dpos)
                len_l.append(dlen)
                pos += adv
            elif tl == 29:  # padding: a discarded event, or the rest of the page
                if delta == 0:
                    break
                if pos + 8 > page_end:
                    torn = True
                    break
                plen = u32(buf, pos + 4)[0]
                if plen > page_end - pos - 4:  # the tail's padding may pass the commit
                    torn = True
                    break
                pos += 4 + plen
            else:
                if pos + 8 > end:
                    torn = True
                    break
                ext = (u32(buf, pos + 4)[0] << 27) | delta
                if tl == 30:
                    ts += ext
                else:  # absolute time stamp; keep the page's upper bits (59-bit field)
                    ts = (ts & ~((1 << 59) - 1)) | ext
                pos += 8
        if torn:
            out.torn_pages += 1
            status[pi] |= PAGE_TORN
    out.cpu.extend([cpu] * (len(ts_l) - n_before))
    if cursor:
        cursor.prev_ts = prev_page_ts


_SOURCE = Path(__file__).resolve().parent / "native" / "ringwalk.c"


def _native() -> ctypes.CDLL | None:
    """The C page walker (tracer/native/ringwalk.c), compiled once into the cache
    (common.native); None when no compiler is at hand (the pure-Python walk is then used)."""
    lib = native.load(_SOURCE, "ring walker")
    if lib is not None:
        lib.td_walk.restype = ctypes.c_long
        lib.td_gather.restype = ctypes.c_long
    return lib


def gather(arr: np.ndarray, offs: np.ndarray, dt: np.dtype) -> np.ndarray | None:
    """The little-endian integers of dtype ``dt`` at byte offsets ``offs`` of the
    bytes ``arr``, in C (one pass); None when the C walker is not at hand or the host
    is big-endian (the caller gathers with numpy).  Raises ``IndexError`` for an
    offset whose field does not lie inside ``arr``."""
    lib = _native()
    if lib is None or sys.byteorder != "little":
        return None
    offs = np.ascontiguousarray(offs, dtype=np.int64)
    out = np.empty(len(offs), dtype=dt)
    got = lib.td_gather(arr.ctypes.data_as(ctypes.c_void_p), ctypes.c_long(len(arr)),
                        offs.ctypes.data_as(ctypes.c_void_p), ctypes.c_long(len(offs)),
                        ctypes.c_long(dt.itemsize), out.ctypes.data_as(ctypes.c_void_p))
    if got != len(offs):
        raise IndexError(f"a {dt.itemsize}-byte field at offset "
                         f"{int(offs[got]) if 0 <= got < len(offs) else '?'} is outside "
                         f"the {len(arr)} bytes read")
    return out


def walk_native(lib: ctypes.CDLL, buf: bytes, base: int, cpu: int, hp: PageHeader,
                out: RawRecords, status: np.ndarray | None = None,
                cursor: CpuCursor | None = None) -> bool:
    walk_len = len(buf) - len(cursor.lookahead) if cursor else len(buf)
    if status is None:
        status = np.zeros(walk_len // hp.page_size, np.int8)
    assert status.dtype == np.int8 and len(status) >= walk_len // hp.page_size
    prev = ctypes.c_uint64(cursor.prev_ts if cursor else 0)

    cap = max(16, len(buf) // 8)
    ts = np.empty(cap, np.int64)
    off = np.empty(cap, np.int64)
    ln = np.empty(cap, np.int32)
    torn = ctypes.c_long(0)
    missed = ctypes.c_uint64(0)
    unknown = ctypes.c_long(0)
    backwards = ctypes.c_long(0)
    arr = np.frombuffer(buf, dtype=np.uint8)
    n = lib.td_walk(
        arr.ctypes.data_as(ctypes.c_void_p), ctypes.c_long(len(buf)), ctypes.c_long(base),
        ctypes.c_long(hp.page_size), ctypes.c_long(hp.commit_offset),
        ctypes.c_long(hp.commit_size), ctypes.c_long(hp.data_offset),
        ctypes.c_long(hp.data_size), ts.ctypes.data_as(ctypes.c_void_p),
        off.ctypes.data_as(ctypes.c_void_p), ln.ctypes.data_as(ctypes.c_void_p),
        ctypes.c_long(cap), ctypes.byref(torn), ctypes.byref(missed), ctypes.byref(unknown),
        ctypes.byref(backwards), status.ctypes.data_as(ctypes.c_void_p),
        ctypes.c_long(walk_len), ctypes.byref(prev))
    if n == -2:
        raise TraceFormatError(f"ring-buffer page layout rejected by the walker: {hp}")
    if n < 0:
        return False
    out.chunks.append((np.full(n, cpu, np.int16), ts[:n], off[:n], ln[:n]))
    out.torn_pages += torn.value
    out.backwards_pages += backwards.value
    out.missed_events += missed.value
    out.missed_unknown_pages += unknown.value
    if cursor:
        cursor.prev_ts = prev.value
    return True


def page_gaps(statuses: list[tuple[int, int, np.ndarray]], rec_cpu: np.ndarray,
              rec_ts: np.ndarray, off: np.ndarray, psize: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """(cpu, time) of each place events are missing: after a page not read whole
    (torn, out of time order, damaged), at the first record read after it; before a
    page that says the ring buffer lost events ahead of it, at its first record.
    A gap after the last record read changes nothing and is not placed."""
    cpus: list[int] = []
    times: list[int] = []
    for cpu, base, status in statuses:
        bad = np.nonzero(status)[0]
        if not len(bad):
            continue
        mine = np.nonzero(rec_cpu == cpu)[0]
        page = (off[mine] - base) // psize  # records are in page order within a CPU
        after = (status[bad] & (PAGE_TORN | PAGE_BACKWARDS | PAGE_DAMAGED)) != 0
        at = np.searchsorted(page, bad + np.where(after, 1, 0), side="left")
        ok = at < len(mine)
        t = rec_ts[mine[at[ok]]]
        cpus += [cpu] * int(ok.sum())
        times += t.tolist()
    return np.asarray(cpus, np.int16), np.asarray(times, np.int64)


def walk_buffers(buffers: dict[int, bytes], hp: PageHeader, native: bool = True,
                 damaged: dict[int, np.ndarray] | None = None,
                 cursors: dict[int, CpuCursor] | None = None,
                 ) -> tuple[RawRecords, list[tuple[int, int, np.ndarray]], bytes, int]:
    """Walk every CPU's pages, one CPU after the other: (the records, each CPU's
    (cpu, offset of its pages in the joined buffer, page verdicts), the joined
    buffer, how many pages were known damaged and not read).

    ``damaged``: per CPU, a bool per page known to have changed since it was
    recorded (tracer.page_sums).  ``cursors``: per CPU, where a walk in batches
    stands (:class:`CpuCursor`), updated."""
    recs = RawRecords()
    chunks = []
    base = 0
    lib = _native() if native else None
    statuses: list[tuple[int, int, np.ndarray]] = []
    damaged_pages = 0
    for cpu in sorted(buffers):
        buf = buffers[cpu]
        if len(buf) % hp.page_size:
            # a stream cut mid-page (the guest died while sending): that page's
            # events are lost, and the trace must say so
            recs.torn_pages += 1
        status = np.zeros(len(buf) // hp.page_size, np.int8)
        bad = (damaged or {}).get(cpu)
        if bad is not None:
            k = min(len(bad), len(status))
            status[:k][np.asarray(bad[:k], dtype=bool)] = PAGE_DAMAGED
            damaged_pages += int(np.count_nonzero(status & PAGE_DAMAGED))
        cur = (cursors or {}).get(cpu)
        walk = buf + cur.lookahead if cur and cur.lookahead else buf
        if lib is None or not walk_native(lib, walk, base, cpu, hp, recs, status, cur):
            walk_pages(walk, base, cpu, hp, recs, status, cur)
        statuses.append((cpu, base, status))
        chunks.append(buf)
        base += len(buf)
    return recs, statuses, b"".join(chunks), damaged_pages
