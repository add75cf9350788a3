"""Decode binary ftrace ring-buffer pages (``trace_pipe_raw``) into the events frame.

Page layout (``events/header_page``): a u64 timestamp, a ``commit`` word whose
low bits give the data length (bit 31: events were lost before this page; bit 30:
their count is stored after the data), then the data.  Each record starts with a
u32: 5-bit ``type_len`` and 27-bit time delta (0: length in the next u32;
1–28: length/4; 29: padding; 30: time extend; 31: absolute time stamp).

The walk over records is sequential by nature and is the only Python loop; all
field extraction is done per event type on numpy arrays.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tracedep.common.files import atomic_output
from tracedep.common.run_manifest import RunManifest
from tracedep.errors import TraceFormatError
from tracedep.tracer import calibration, control, module_sections, page_sums, schema
from tracedep.tracer.ftrace_formats import (
    EventFormat,
    PageHeader,
    parse_format,
    parse_header_page,
)
from tracedep.tracer.lock_init import OFFSET_MAX, clean_name
from tracedep.tracer.lockdep_events import merge_lockdep
from tracedep.tracer.probes import (
    GROUP,
    INLINE_SUFFIX,
    IRQ_STATE_FIELDS,
    LOCK_FUNCS,
    MIGHT_SLEEP_FUNC,
    parse_event_name,
)

log = logging.getLogger(__name__)

RB_MISSED_EVENTS = 1 << 31
RB_MISSED_STORED = 1 << 30
SOFTIRQ_NAMES = ("HI", "TIMER", "NET_TX", "NET_RX", "BLOCK", "IRQ_POLL", "TASKLET", "SCHED",
                 "HRTIMER", "RCU")
# sleep_call rows for might_sleep() carry this func name, not "__cond_resched"
MIGHT_SLEEP = "might_sleep"

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


_TS_MAX = (1 << 63) - 1  # ts_ns is an int64 column; a later time is damage


# page verdict bits, as tracer/native/ringwalk.c sets them
PAGE_TORN, PAGE_BACKWARDS, PAGE_MISSED_BEFORE, PAGE_DAMAGED = 1, 2, 4, 8


def walk_pages(buf: bytes, base: int, cpu: int, hp: PageHeader, out: RawRecords,
               status: np.ndarray | None = None) -> None:
    """Append the records of every page in ``buf`` (offsets shifted by ``base``).

    The same walk as tracer/native/ringwalk.c, check for check: every offset and
    length read from a page is checked against that page; a page failing one is
    torn (its remaining records dropped), a page whose time stamp does not fit
    between its neighbours' is counted as going backwards and dropped."""
    psize = hp.page_size
    dstart = hp.data_offset
    u32 = _U32.unpack_from
    u64 = _U64.unpack_from
    ts_l, off_l, len_l = out.ts, out.off, out.length
    n_before = len(ts_l)
    prev_page_ts = 0
    if status is None:
        status = np.zeros(len(buf) // psize, np.int8)
    for page in range(0, len(buf) - psize + 1, psize):
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


def _native() -> Any:
    """The C page walker (tracer/native/ringwalk.c), compiled once into the cache; None
    when no compiler is at hand (the pure-Python walk is then used)."""
    global _NATIVE
    if _NATIVE is not None:
        return _NATIVE or None
    import ctypes
    import hashlib
    import subprocess

    from tracedep.common.cache import cache_root

    src = Path(__file__).resolve().parent / "native" / "ringwalk.c"
    key = hashlib.sha256(src.read_bytes()).hexdigest()[:12]
    so = cache_root() / "native" / f"ringwalk-{key}.so"
    try:
        if not so.is_file():
            so.parent.mkdir(parents=True, exist_ok=True)
            with atomic_output(so) as tmp:
                subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", str(tmp), str(src)],
                               check=True, capture_output=True)
        lib = ctypes.CDLL(str(so))
        lib.td_walk.restype = ctypes.c_long
        _NATIVE = lib
    except (OSError, subprocess.CalledProcessError) as e:
        log.info("native ring walker unavailable (%s); using Python", e)
        _NATIVE = False
    return _NATIVE or None


_NATIVE: Any = None


def walk_native(lib: Any, buf: bytes, base: int, cpu: int, hp: PageHeader,
                out: RawRecords, status: np.ndarray | None = None) -> bool:
    import ctypes

    if status is None:
        status = np.zeros(len(buf) // hp.page_size, np.int8)
    assert status.dtype == np.int8 and len(status) >= len(buf) // hp.page_size

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
        ctypes.byref(backwards), status.ctypes.data_as(ctypes.c_void_p))
    if n == -2:
        raise TraceFormatError(f"ring-buffer page layout rejected by the walker: {hp}")
    if n < 0:
        return False
    out.chunks.append((np.full(n, cpu, np.int16), ts[:n], off[:n], ln[:n]))
    out.torn_pages += torn.value
    out.backwards_pages += backwards.value
    out.missed_events += missed.value
    out.missed_unknown_pages += unknown.value
    return True


class _Cat:
    """A categorical column built by assigning strings to row sets, never per row."""

    def __init__(self, n: int, default: str) -> None:
        self.cats: list[str] = [default]
        self.index: dict[str, int] = {default: 0}
        self.codes = np.zeros(n, dtype=np.int32)

    def code(self, value: str) -> int:
        c = self.index.get(value)
        if c is None:
            c = self.index[value] = len(self.cats)
            self.cats.append(value)
        return c

    def __setitem__(self, rows: Any, value: Any) -> None:
        if isinstance(value, str):
            self.codes[rows] = self.code(value)
        else:  # one string per row
            self.codes[rows] = [self.code(v) for v in value]

    def build(self) -> pd.Categorical:
        return pd.Categorical.from_codes(self.codes, categories=pd.Index(self.cats, dtype=object))


def _unique_names(names: list[str], inverse: np.ndarray) -> pd.Categorical:
    cats: list[str] = []
    index: dict[str, int] = {}
    remap = np.empty(len(names), dtype=np.int32)
    for i, nm in enumerate(names):
        c = index.get(nm)
        if c is None:
            c = index[nm] = len(cats)
            cats.append(nm)
        remap[i] = c
    return pd.Categorical.from_codes(remap[inverse], categories=pd.Index(cats, dtype=object))


def _gather(arr: np.ndarray, offs: np.ndarray, size: int, signed: bool) -> np.ndarray:
    if len(offs) == 0:
        return np.zeros(0, dtype=np.int64 if signed else np.uint64)
    if size not in (1, 2, 4, 8):
        raise ValueError(f"a {size}-byte integer field")
    idx = offs[:, None] + np.arange(size, dtype=np.int64)
    raw = np.ascontiguousarray(arr[idx])
    dt = {1: "i1", 2: "<i2", 4: "<i4", 8: "<i8"}[size] if signed else {
        1: "u1", 2: "<u2", 4: "<u4", 8: "<u8"}[size]
    return raw.view(dt).ravel()


def _string_at(buf: bytes, rec: int, fmt_field_off: int, data_loc: bool, reclen: int) -> str:
    if data_loc:
        loc = _U32.unpack_from(buf, rec + fmt_field_off)[0]
        start, ln = rec + (loc & 0xFFFF), loc >> 16
    else:
        start, ln = rec + fmt_field_off, reclen - fmt_field_off
    s = buf[start:start + ln]
    return s.split(b"\0", 1)[0].decode("utf-8", "replace").rstrip("\n")


@dataclass
class Decoded:
    events: pd.DataFrame
    stacks: list[tuple[int, ...]]
    counts: dict[str, int]
    torn_pages: int
    missed_events: int
    total: int
    comms: dict[int, str]
    # what each probe kind reported at the boot's calibration point (tracer.calibration)
    calibration: dict[str, Any] = field(default_factory=dict)
    # lockdep's tracepoints, when the kernel has them (tracer.lockdep_events)
    lockdep: dict[str, int] = field(default_factory=dict)
    # pages dropped because their time stamp did not fit their neighbours' (damage)
    backwards_pages: int = 0
    # records dropped because they contradict their format, by why
    rejected: dict[str, int] = field(default_factory=dict)
    # pages not read because they changed since they were recorded (tracer.page_sums)
    damaged_pages: int = 0
    # pages recorded (tracer.page_sums) that the files no longer have
    missing_pages: int = 0
    # each module load's sections, as do_init_module saw them (tracer.module_sections)
    module_loads: list[module_sections.KernelLoad] = field(default_factory=list)
    # every record read per CPU, before any was set aside (stacks, rejected records)
    records_per_cpu: dict[int, int] = field(default_factory=dict)


def decode(
    buffers: dict[int, bytes],
    header_page: str,
    formats: dict[str, str],
    call_insn_size: int,
    kprobe_irqs_off_unreliable: bool = False,
    saved_cmdlines: str = "",
    native: bool = True,
    inline_sites: dict[str, dict[str, Any]] | None = None,
    damaged: dict[int, np.ndarray] | None = None,
) -> Decoded:
    """Decode per-CPU ring-buffer pages into the events frame.

    ``damaged``: per CPU, a bool per page known to have changed since it was
    recorded (tracer.page_sums); those pages are not read.  Every page that is
    not read whole leaves a ``gap`` row where its events are missing, so that the
    analysis forgets what it believed held there (analysis.heldlocks)."""
    try:
        hp = parse_header_page(header_page)
    except ValueError as e:
        raise TraceFormatError(f"control.log: {e}") from None
    fmts: dict[int, EventFormat] = {}
    for name, text in formats.items():
        f = parse_format(name, text)
        if f is not None:
            fmts[f.id] = f
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
        if lib is None or not walk_native(lib, buf, base, cpu, hp, recs, status):
            walk_pages(buf, base, cpu, hp, recs, status)
        statuses.append((cpu, base, status))
        chunks.append(buf)
        base += len(buf)
    buf = b"".join(chunks)
    arr = np.frombuffer(buf, dtype=np.uint8)
    rec_cpu, rec_ts, off, reclen32 = recs.arrays()
    gap_cpu, gap_ts = _page_gaps(statuses, rec_cpu, rec_ts, off, hp.page_size)
    n = len(off)
    # every record read, stacks and rejected ones too: what the guest's ring buffer
    # counted as read ("read events" in per_cpu/cpuN/stats), when nothing was lost
    ucpu, ucount = np.unique(rec_cpu, return_counts=True)
    records_per_cpu = dict(zip(ucpu.tolist(), ucount.tolist(), strict=True))
    if n == 0:
        return Decoded(schema.empty(), [], {}, recs.torn_pages, recs.missed_events, 0, {},
                       backwards_pages=recs.backwards_pages, damaged_pages=damaged_pages)
    reclen = reclen32.astype(np.int64)
    # every record starts with the 8-byte common header (type, flags, preempt count, pid)
    hdr_ok = (reclen >= 8) & (off + 8 <= len(arr))
    hoff = np.where(hdr_ok, off, 0)
    etype = np.where(hdr_ok, _gather(arr, hoff, 2, False).astype(np.int64), -1)
    flags = _gather(arr, hoff + 2, 1, False)
    pc = _gather(arr, hoff + 3, 1, False)
    pid = _gather(arr, hoff + 4, 4, True)

    cols: dict[str, Any] = {
        "ts_ns": rec_ts,
        "cpu": rec_cpu,
        "pid": pid.astype(np.int32),
        "irqs_off": (flags & schema.TRACE_FLAG_IRQS_OFF) != 0,
        "preempt_depth": (pc & 0xF).astype(np.int8),
        "bh_off": (flags & schema.TRACE_FLAG_BH_OFF) != 0,
        "in_hardirq": (flags & schema.TRACE_FLAG_HARDIRQ) != 0,
        "in_softirq": (flags & schema.TRACE_FLAG_SOFTIRQ) != 0,
        "in_nmi": (flags & schema.TRACE_FLAG_NMI) != 0,
        "lock_addr": np.zeros(n, np.uint64),
        "ip": np.zeros(n, np.uint64),
        "gfp": np.zeros(n, np.uint32),
        "ptr": np.zeros(n, np.uint64),
        "bytes": np.zeros(n, np.int64),
        "value": np.zeros(n, np.int64),
        "stack_id": np.full(n, -1, np.int32),
        "target_pid": np.full(n, -1, np.int32),
        "key_addr": np.zeros(n, np.uint64),
    }
    kind = _Cat(n, "other")
    event = _Cat(n, "")
    lock_type = _Cat(n, "")
    lock_flags = _Cat(n, "")
    func = _Cat(n, "")
    lock_name = _Cat(n, "")
    keep = np.ones(n, dtype=bool)
    rejected: dict[str, int] = {}
    rejected_mask = np.zeros(n, dtype=bool)
    if not hdr_ok.all():
        _reject(rejected, rejected_mask, keep, kind, np.nonzero(~hdr_ok)[0],
                "records shorter than a header")
    comms: dict[int, str] = {}
    for line in saved_cmdlines.splitlines():
        p, _, c = line.strip().partition(" ")
        if p.isdigit():
            comms[int(p)] = c
    stacks: list[tuple[int, ...]] = []
    stack_rows: list[tuple[int, int]] = []  # (row of the stack record, stack id)
    counts: dict[str, int] = {}
    # calibration: the IRQ state a probe fetched (1 off, 0 on, -1 none) and the
    # kind of each of our probe rows (1 kprobe, 2 kretprobe, 3 mid-function kprobe)
    irq_state = np.full(n, -1, np.int8)
    pkind = np.zeros(n, np.int8)
    cal_rows: dict[str, np.ndarray] = {}
    sites = inline_sites or {}
    msec_rows: list[tuple[int, int, int, str, int, list[tuple[str, int]]]] = []

    def fetch_irq_state(f: EventFormat, rows: np.ndarray) -> None:
        for fname, (mask, set_means_off) in IRQ_STATE_FIELDS.items():
            if fname in f.fields:
                v = fld(f, fname, rows, False)
                irq_state[rows] = ((v & np.uint64(mask)) != 0) == set_means_off

    def call_site(f: EventFormat, rows: np.ndarray) -> np.ndarray:
        # a probe on an inlined lock has no return address: it is the call site
        if "ret" in f.fields:
            return fld(f, "ret", rows, False) - np.uint64(call_insn_size)
        return fld(f, "__probe_ip", rows, False)

    def fld(f: EventFormat, name: str, rows: np.ndarray, signed: bool | None = None
            ) -> np.ndarray:
        fd = f.fields[name]
        return _gather(arr, off[rows] + fd.offset, fd.size,
                       fd.signed if signed is None else signed)

    for tid in np.unique(etype[hdr_ok]):
        rows = np.nonzero(etype == tid)[0]
        f = fmts.get(int(tid))
        name = f.full_name if f else f"unknown/{tid}"
        counts[name] = int(len(rows))
        event[rows] = name
        if f is None:
            continue
        # the guest wrote both the records and their formats: a record shorter than
        # what its format says it holds, a field of a size no C type has, or a field
        # the decoder needs that the format lacks rejects those records, counted
        need = max((fd.offset + fd.size for fd in f.fields.values()
                    if not fd.is_data_loc), default=0)
        short = rows[reclen[rows] < need]
        if len(short):
            _reject(rejected, rejected_mask, keep, kind, short,
                    f"{name}: records shorter than the format")
            rows = rows[reclen[rows] >= need]
        try:
            ours = parse_event_name(name)
            if ours is None and f.system == GROUP and f.name.startswith(calibration.CAL_PREFIX):
                cal_rows[f.name.removeprefix(calibration.CAL_PREFIX)] = rows
                fetch_irq_state(f, rows)
            if ours is not None:
                role, fn = ours
                if kprobe_irqs_off_unreliable:
                    cols["irqs_off"][rows] = False
                fetch_irq_state(f, rows)
                pkind[rows] = 2 if role == "lr" else (3 if INLINE_SUFFIX in f.name else 1)
                if role in ("lk", "ul"):
                    kind[rows] = "lock_acquire" if role == "lk" else "lock_release"
                    lf = LOCK_FUNCS.get(fn)
                    lock_type[rows] = lf.lock_type if lf else ""
                    lock_flags[rows] = "+".join(lf.flags) if lf else ""
                    if "lock" in f.fields:  # else a static lock: decode_run places it
                        cols["lock_addr"][rows] = fld(f, "lock", rows, False) + np.uint64(
                            int((sites.get(f.name) or {}).get("lock", {}).get("addend", 0))
                            & (2**64 - 1))
                    cols["ip"][rows] = call_site(f, rows)
                    if "sub" in f.fields:
                        cols["value"][rows] = fld(f, "sub", rows, True)
                    if "val" in f.fields and lf is not None and lf.success:
                        # an inlined trylock: taken iff the lock word let it (inline_locks)
                        from tracedep.tracer.inline_locks import trylock_taken

                        word = fld(f, "val", rows, False)
                        cols["value"][rows] = word.astype(np.int64)
                        kind[rows[~trylock_taken(fn, word)]] = "other"
                elif role in ("li", "lc"):
                    _lock_init_rows(f, fn, rows, fld, call_site, cols, kind, func, lock_name,
                                    buf, off, reclen)
                elif role == "lr":
                    kind[rows] = "lock_return"
                    lf = LOCK_FUNCS.get(fn)
                    lock_type[rows] = lf.lock_type if lf else ""
                    lock_flags[rows] = "+".join(lf.flags) if lf else ""
                    if "rv" in f.fields:  # conditional acquires only (tracer.probes)
                        cols["value"][rows] = fld(f, "rv", rows, True)
                    cols["ip"][rows] = fld(f, "__probe_ret_ip", rows, False) - np.uint64(
                        call_insn_size)
                else:
                    kind[rows] = "sleep_call"
                    func[rows] = MIGHT_SLEEP if fn == MIGHT_SLEEP_FUNC else fn
                    cols["ip"][rows] = call_site(f, rows)
            elif f.system == GROUP and (chunk := module_sections.parse_event(f.name)) \
                    is not None:
                keep[rows] = False  # for the symbolizer, not an event of the analysis
                _module_section_rows(f, chunk, rows, fld, buf, off, reclen, rec_ts, rec_cpu,
                                     msec_rows)
            elif f.system == "kmem" and "gfp_flags" in f.fields:
                kind[rows] = "alloc"
                cols["gfp"][rows] = fld(f, "gfp_flags", rows, False).astype(np.uint32)
                if "ptr" in f.fields:
                    cols["ptr"][rows] = fld(f, "ptr", rows, False)
                if "bytes_alloc" in f.fields:
                    cols["bytes"][rows] = fld(f, "bytes_alloc", rows, False).astype(np.int64)
                elif "order" in f.fields:
                    cols["bytes"][rows] = 4096 << fld(f, "order", rows, True).astype(np.int64)
                if "call_site" in f.fields:
                    cols["ip"][rows] = fld(f, "call_site", rows, False) - np.uint64(call_insn_size)
                func[rows] = f.name
            elif f.system == "kmem" and f.name in ("kfree", "kmem_cache_free"):
                kind[rows] = "free"
                cols["ptr"][rows] = fld(f, "ptr", rows, False)
                cols["ip"][rows] = fld(f, "call_site", rows, False) - np.uint64(call_insn_size)
            elif name == "sched/sched_switch":
                kind[rows] = "sched_switch"
                cols["value"][rows] = fld(f, "prev_state", rows, False).astype(np.int64)
                nf = f.fields["next_comm"]
                pf = f.fields["prev_comm"]
                npid = fld(f, "next_pid", rows, True)
                ppid = fld(f, "prev_pid", rows, True)
                cols["target_pid"][rows] = npid.astype(np.int32)
                for r, a, b in zip(rows.tolist(), ppid.tolist(), npid.tolist(), strict=True):
                    o = int(off[r])
                    comms[a] = buf[o + pf.offset:o + pf.offset + pf.size].split(b"\0")[0].decode(
                        "utf-8", "replace")
                    comms[b] = buf[o + nf.offset:o + nf.offset + nf.size].split(b"\0")[0].decode(
                        "utf-8", "replace")
            elif name in ("lock/lock_acquire", "lock/lock_release") and "lockdep_addr" in f.fields:
                # lockdep's own events (CONFIG_LOCKDEP kernels): the lockdep_map is the
                # instance, its name lockdep's class name (in ``func``); type, flags and
                # call site come from our probe of the same acquisition (lockdep_events)
                kind[rows] = "lock_acquire" if name.endswith("acquire") else "lock_release"
                cols["lock_addr"][rows] = fld(f, "lockdep_addr", rows, False)
                nf = f.fields["name"]
                func[rows] = [_string_at(buf, int(off[r]), nf.offset, nf.is_data_loc,
                                         int(reclen[r])) for r in rows.tolist()]
                if "flags" in f.fields:
                    fl = fld(f, "flags", rows, False)
                    lock_flags[rows[(fl & np.uint64(1)) != 0]] = "trylock"
            elif name in ("irq/irq_handler_entry", "irq/irq_handler_exit"):
                kind[rows] = "irq_entry" if name.endswith("entry") else "irq_exit"
                cols["value"][rows] = fld(f, "irq", rows, True)
                if "name" in f.fields:
                    nf = f.fields["name"]
                    func[rows] = [_string_at(buf, int(off[r]), nf.offset, nf.is_data_loc,
                                             int(reclen[r])) for r in rows.tolist()]
            elif name in ("irq/softirq_entry", "irq/softirq_exit"):
                kind[rows] = "softirq_entry" if name.endswith("entry") else "softirq_exit"
                vec = fld(f, "vec", rows, False).astype(np.int64)
                cols["value"][rows] = vec
                func[rows] = [SOFTIRQ_NAMES[v] if v < len(SOFTIRQ_NAMES) else str(v) for v in vec]
            elif name in ("module/module_load", "module/module_free"):
                kind[rows] = "module_load" if name.endswith("load") else "other"
                nf = f.fields["name"]
                func[rows] = [_string_at(buf, int(off[r]), nf.offset, nf.is_data_loc,
                                         int(reclen[r])) for r in rows.tolist()]
            elif name == "ftrace/print":
                kind[rows] = "marker"
                bf = f.fields["buf"]
                texts = [_string_at(buf, int(off[r]), bf.offset, False, int(reclen[r]))
                         for r in rows.tolist()]
                func[rows] = texts
                cal_rows["marker"] = rows[np.asarray([t == calibration.MARKER for t in texts],
                                                     dtype=bool)]
            elif name == "ftrace/kernel_stack":
                keep[rows] = False
                sz = f.fields["size"]
                cf = f.fields["caller"]
                nent = fld(f, "size", rows, True)
                for r, k in zip(rows.tolist(), nent.tolist(), strict=True):
                    o = int(off[r])
                    room = (int(reclen[r]) - cf.offset) // 8
                    k = max(0, min(int(k), room))
                    frames = struct.unpack_from(f"<{k}Q", buf, o + cf.offset)
                    stack_rows.append((r, len(stacks)))
                    stacks.append(tuple(x for x in frames if x))
                del sz
            elif name.startswith("timer/timer_expire") and "function" in f.fields:
                cols["ip"][rows] = fld(f, "function", rows, False)
        except (KeyError, ValueError, OverflowError, IndexError, struct.error) as e:
            _reject(rejected, rejected_mask, keep, kind, rows, f"{name}: {type(e).__name__}: {e}")
    cal = _calibrate(cols, cal_rows, flags, irq_state, pkind, kprobe_irqs_off_unreliable,
                     kind, lock_type)
    cols.update(kind=kind.build(), event=event.build(), lock_type=lock_type.build(),
                lock_flags=lock_flags.build(), func=func.build(), lock_name=lock_name.build())
    comms_idle = {**comms, 0: "<idle>"}
    upids, pinv = np.unique(cols["pid"], return_inverse=True)
    cols["comm"] = _unique_names([comms_idle.get(int(p), "<...>") for p in upids], pinv)
    df = pd.DataFrame(cols)
    # A conditional stacktrace trigger records its stack right after the event, on
    # the same CPU: hand the stack to the record before it.
    if stack_rows:
        srow = np.array([r for r, _ in stack_rows], dtype=np.int64)
        sid = np.array([s for _, s in stack_rows], dtype=np.int32)
        cpu_arr = cols["cpu"]
        # records are in per-CPU order here (concatenated CPU by CPU)
        prev = srow - 1
        ok = (prev >= 0) & (cpu_arr[np.maximum(prev, 0)] == cpu_arr[srow]) & keep[
            np.maximum(prev, 0)]
        sid_col = df["stack_id"].to_numpy().copy()
        sid_col[prev[ok]] = sid[ok]
        df["stack_id"] = sid_col
    # a rejected record is a gap too: what it said is unknown
    rejected_rows = np.nonzero(rejected_mask)[0]
    df = df[keep]
    if len(gap_ts) or len(rejected_rows):
        gaps = pd.DataFrame({
            "ts_ns": np.concatenate([gap_ts, rec_ts[rejected_rows]]) - 1,
            "cpu": np.concatenate([gap_cpu, rec_cpu[rejected_rows]]).astype(np.int16),
            "kind": "gap", "event": GAP_EVENT})
        df = pd.concat([df, schema.conform(gaps)], ignore_index=True)
    df = df.sort_values(["ts_ns", "cpu"], kind="stable")
    events = schema.conform(df)
    n_gaps = int((events["kind"] == "gap").sum())
    return Decoded(events, stacks, counts, recs.torn_pages, recs.missed_events,
                   len(events) - n_gaps, comms, cal, backwards_pages=recs.backwards_pages,
                   rejected=rejected, damaged_pages=damaged_pages,
                   module_loads=module_sections.assemble(msec_rows),
                   records_per_cpu=records_per_cpu)


GAP_EVENT = "tracedep/gap"  # the event name of gap rows (no probe has it)


def _page_gaps(statuses: list[tuple[int, int, np.ndarray]], rec_cpu: np.ndarray,
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


def _reject(rejected: dict[str, int], mask: np.ndarray, keep: np.ndarray, kind: Any,
            rows: np.ndarray, why: str) -> None:
    """Drop ``rows`` from the events, counted under ``why`` (and marked in ``mask``)."""
    keep[rows] = False
    mask[rows] = True
    kind[rows] = "other"
    rejected[why] = rejected.get(why, 0) + int(len(rows))


def _bounded_string(buf: bytes, rec: int, reclen: int, fd: Any) -> str:
    """A ``string`` fetch-arg of one record, read only inside that record (the
    record's bytes came from the guest: its data_loc may point anywhere)."""
    if fd.is_data_loc:
        loc = _U32.unpack_from(buf, rec + fd.offset)[0]
        start, ln = loc & 0xFFFF, loc >> 16
    else:
        start, ln = fd.offset, reclen - fd.offset
    if start < 0 or ln <= 0 or start + ln > reclen:
        return ""
    return clean_name(buf[rec + start:rec + start + ln])


def _module_section_rows(f: EventFormat, chunk: int, rows: np.ndarray, fld: Any, buf: bytes,
                         off: np.ndarray, reclen: np.ndarray, ts: np.ndarray, cpu: np.ndarray,
                         out: list[tuple[int, int, int, str, int, list[tuple[str, int]]]]
                         ) -> None:
    """Rows of the do_init_module probes (tracer.module_sections), appended to ``out``."""
    if "name" not in f.fields or "n" not in f.fields:
        return
    n = fld(f, "n", rows, False)
    addrs = [fld(f, f"a{j}", rows, False) if f"a{j}" in f.fields else None
             for j in range(module_sections.CHUNK)]
    for i, r in enumerate(rows.tolist()):
        o, ln = int(off[r]), int(reclen[r])
        secs = []
        for j, a in enumerate(addrs):
            sf = f.fields.get(f"s{j}")
            if a is None or sf is None:
                break
            secs.append((_bounded_string(buf, o, ln, sf), int(a[i])))
        out.append((int(ts[r]), int(cpu[r]), chunk, _bounded_string(buf, o, ln, f.fields["name"]),
                    int(n[i]), secs))


def _lock_init_rows(f: EventFormat, fn: str, rows: np.ndarray, fld: Any, call_site: Any,
                    cols: dict[str, Any], kind: _Cat, func: _Cat, lock_name: _Cat,
                    buf: bytes, off: np.ndarray, reclen: np.ndarray) -> None:
    """Rows of a lock initializer (``li``) or re-keying (``lc``) probe (tracer.lock_init)."""
    if "lock" in f.fields:
        lock = fld(f, "lock", rows, False)
    elif "obj" in f.fields and "off" in f.fields:
        moff = fld(f, "off", rows, False)
        bad = moff >= np.uint64(OFFSET_MAX)
        lock = fld(f, "obj", rows, False) + np.where(bad, np.uint64(0), moff)
        lock[bad] = 0
    else:
        return
    keep = lock != 0
    rows, lock = rows[keep], lock[keep]
    kind[rows] = "lock_init"
    func[rows] = fn
    cols["lock_addr"][rows] = lock
    cols["ip"][rows] = call_site(f, rows)
    if "key" in f.fields:
        cols["key_addr"][rows] = fld(f, "key", rows, False)
    if "mode" in f.fields:  # a directory re-key's i_mode
        cols["value"][rows] = fld(f, "mode", rows, False).astype(np.int64)
    nf = f.fields.get("name")
    if nf is not None:
        lock_name[rows] = [_bounded_string(buf, int(off[r]), int(reclen[r]), nf)
                           for r in rows.tolist()]


def _calibrate(cols: dict[str, Any], cal_rows: dict[str, np.ndarray], flags: np.ndarray,
               irq_state: np.ndarray, pkind: np.ndarray, unreliable_default: bool,
               kind: _Cat, lock_type: _Cat) -> dict[str, Any]:
    """Measure the calibration records and correct our probes' context columns."""
    depth = cols["preempt_depth"]
    cal = calibration.measure(cal_rows, flags, depth, irq_state, cols["pid"])
    unreliable_rows = 0
    mismatch = uncalibrated = 0

    def irqs_from_fetch(rows: np.ndarray) -> int:
        known = rows & (irq_state >= 0)
        cols["irqs_off"][rows] = False
        cols["irqs_off"][known] = irq_state[known] == 1
        return int((rows & (irq_state < 0)).sum())

    for code, kinds in ((1, ("kprobe",)), (2, ("kretprobe",)), (3, ("kprobe_mid", "kprobe"))):
        sel = pkind == code
        if not sel.any():
            continue
        ck = next((k for k in kinds if k in cal), None)
        c = cal[ck] if ck else None
        if code == 3:
            # a mid-function row that did not come the calibration's way (x86: through
            # int3 when the calibration's did not, or through an optimized jump when
            # it did) is not described by it: its fetched IRQ state is used, its
            # preempt depth is unknown (0: a finding may be lost, none invented) and
            # the hardirq/NMI flags of an exception handler are dropped
            other = sel & (cols["in_nmi"] != bool(c and c.get("nmi")))
            if other.any():
                n = int(other.sum())
                if ck == "kprobe_mid":
                    mismatch += n
                else:
                    uncalibrated += n
                unreliable_rows += irqs_from_fetch(other)
                exc_rows = other & cols["in_nmi"]
                cols["in_hardirq"][exc_rows] = False
                cols["in_nmi"][exc_rows] = False
                depth[other] = 0
                sel = sel & ~other
        reliable = calibration.irqs_reliable(cal, ck) if ck else None
        if reliable is None:
            reliable = not unreliable_default
        if not reliable:
            unreliable_rows += irqs_from_fetch(sel)
        if c is not None and calibration.in_exception(c):
            # the handler's own hardirq/NMI context, not the probed code's
            cols["in_hardirq"][sel] = False
            cols["in_nmi"][sel] = False
        offset = calibration.preempt_offset(c) if c is not None else 0
        if offset > 0:
            depth[sel] = np.maximum(depth[sel].astype(np.int16) - offset, 0).astype(np.int8)
        elif offset < 0:
            # the nibble wrapped below zero at depth 0 (calibration's module doc)
            depth[sel] = ((depth[sel].astype(np.int16) - offset) & 0xF).astype(np.int8)
    cal["_regime_mismatch"] = mismatch
    cal["_uncalibrated_rows"] = uncalibrated
    cal["_irqs_unreliable_rows"] = unreliable_rows
    # does preempt_count count held spinlocks?  At a spinlock's release the lock is
    # still held: its depth is >= 1 wherever CONFIG_PREEMPT_COUNT is set
    spin = np.isin(lock_type.codes, [lock_type.index[t] for t in ("spinlock", "rwlock-r",
                                                                   "rwlock-w")
                                     if t in lock_type.index])
    rel = (kind.codes == kind.index.get("lock_release", -1)) & spin & (pkind > 0) & ~(
        cols["in_hardirq"] | cols["in_softirq"] | cols["in_nmi"])
    cal["_spin_preempt"] = bool((depth[rel] >= 1).mean() > 0.5) if rel.sum() >= 5 else None
    return cal


def read_run_buffers(run_dir: Path) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    for p in sorted((run_dir / "trace").glob("cpu*.raw")):
        out[int(p.stem[3:])] = p.read_bytes()
    return out


def decode_run(run_dir: Path, info: RunManifest | None = None) -> Decoded:
    """Decode a run directory written by ``tracer.session``."""
    ctl = control.load(run_dir / "control.log")
    hp = ctl.header_page()
    if not hp:
        raise TraceFormatError(f"{run_dir}: the guest sent no ring-buffer header "
                               "(it died before tracing was armed)")
    if info is None:
        from tracedep.common import run_manifest as manifest

        info = manifest.read(run_dir)
    sites: dict[str, dict[str, Any]] = {k: v for k, v in info.inline_sites.items()}
    buffers = read_run_buffers(run_dir)
    try:
        psize = parse_header_page(hp).page_size
    except ValueError as e:
        raise TraceFormatError(f"{run_dir / 'control.log'}: {e}") from None
    damaged = {}
    missing = 0
    for cpu, buf in buffers.items():
        bad = page_sums.damaged(run_dir / "trace" / f"cpu{cpu}.raw", buf, psize)
        if bad is not None:
            damaged[cpu] = bad
    for side in sorted((run_dir / "trace").glob(f"cpu*{page_sums.SUFFIX}")):
        raw = side.with_suffix(".raw")
        had = page_sums.recorded_pages(raw) or 0
        now = len(buffers.get(int(side.stem[3:]), b"")) // psize if side.stem[3:].isdigit() \
            else 0
        missing += max(had - now, 0)
    decoded = decode(
        buffers,
        hp,
        ctl.formats(),
        info.call_insn_size,
        info.machine_kprobe_irqs_masked,
        ctl.file("/sys/kernel/tracing/saved_cmdlines") or "",
        inline_sites=sites,
        damaged=damaged,
    )
    decoded.missing_pages = missing
    if any((s.get("lock") or {}).get("kind") == "static" for s in sites.values()):
        _place_static_locks(decoded, sites, info)
    if decoded.counts.get("lock/lock_acquire"):
        decoded.lockdep = merge_lockdep(decoded.events)
    return decoded


def _place_static_locks(decoded: Decoded, sites: dict[str, dict[str, Any]],
                        info: RunManifest) -> None:
    """Runtime addresses of the static locks of inline probes (no fetch-arg can give them)."""
    from tracedep.tracer.inline_locks import static_lock_addresses

    ev = decoded.events
    loads = ev[ev["kind"] == "module_load"]
    load_ts: dict[str, list[int]] = {}
    for name, t in zip(loads["func"].astype(str), loads["ts_ns"].tolist(), strict=True):
        load_ts.setdefault(name, []).append(int(t))
    where = static_lock_addresses(sites, info, ev["event"].astype(str).to_numpy(),
                                  ev["ts_ns"].to_numpy(), load_ts, decoded.module_loads)
    if where:
        la = ev["lock_addr"].to_numpy().copy()
        idx = np.fromiter(where.keys(), dtype=np.int64, count=len(where))
        la[idx] = np.fromiter(where.values(), dtype=np.uint64, count=len(where))
        ev["lock_addr"] = la
