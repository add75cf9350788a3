"""The events frame's columns, read from the records of one event type at a time.

All records of one type share a layout (the type's ``format``), so each field is
gathered for all of them at once on numpy arrays; only strings and stacks are read
record by record.  The guest wrote both the records and their formats: a record
that contradicts its format is rejected, counted by why, and leaves a gap.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pandas as pd

from tracedep.tracer import calibration, module_sections, ring_pages, schema
from tracedep.tracer.ftrace_formats import EventFormat
from tracedep.tracer.lock_init import OFFSET_MAX, clean_name
from tracedep.tracer.probes import (
    GROUP,
    INLINE_SUFFIX,
    IRQ_STATE_FIELDS,
    LOCK_FUNCS,
    MIGHT_SLEEP_FUNC,
    parse_event_name,
)
from tracedep.tracer.wait_probes import WAIT_FUNCS

SOFTIRQ_NAMES = ("HI", "TIMER", "NET_TX", "NET_RX", "BLOCK", "IRQ_POLL", "TASKLET", "SCHED",
                 "HRTIMER", "RCU")
# sleep_call rows for might_sleep() carry this func name, not "__cond_resched"
MIGHT_SLEEP = "might_sleep"

_U32 = struct.Struct("<I")
# one module-sections probe record: (ts, cpu, chunk, module, section count, [(name, addr)])
SectionRow = tuple[int, int, int, str, int, list[tuple[str, int]]]


class CatColumn:
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


def sorted_unique(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(values, return_inverse=True)`` by hashing (pandas.factorize): a
    window's pids are few, and sorting all its rows to find them cost a sort per window."""
    codes, uniq = pd.factorize(values, sort=False)
    order = np.argsort(uniq, kind="stable")
    rank = np.empty(len(order), dtype=np.intp)
    rank[order] = np.arange(len(order))
    return np.asarray(uniq)[order], rank[codes]


def unique_names(names: list[str], inverse: np.ndarray) -> pd.Categorical:
    """A categorical column from per-value ``names`` (which may repeat) and codes."""
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
    """The little-endian integers of ``size`` bytes at byte offsets ``offs`` of ``arr``
    (every offset checked by the caller: ``offs + size <= len(arr)``)."""
    dt = np.dtype({1: "i1", 2: "<i2", 4: "<i4", 8: "<i8"}[size] if signed else {
        1: "u1", 2: "<u2", 4: "<u4", 8: "<u8"}[size]) if size in (1, 2, 4, 8) else None
    if dt is None:
        raise ValueError(f"a {size}-byte integer field")
    if len(offs) == 0:
        return np.zeros(0, dtype=np.int64 if signed else np.uint64)
    if (out := ring_pages.gather(arr, offs, dt)) is not None:
        return out
    if size == 1:
        return arr[offs].view(dt)
    # the buffer seen as integers from each byte phase: one index per value, where
    # gathering its bytes one by one costs ``size`` (records are 4-byte aligned, so a
    # field's offsets fall in one or two phases)
    q, phase = np.divmod(offs, size)
    out = np.empty(len(offs), dtype=dt)
    for k in np.flatnonzero(np.bincount(phase, minlength=size)).tolist():
        view = arr[k:k + (len(arr) - k) // size * size].view(dt)
        sel = phase == k
        out[sel] = view[q[sel]]
    return out


def _string_at(buf: bytes, rec: int, fmt_field_off: int, data_loc: bool, reclen: int) -> str:
    if data_loc:
        loc = _U32.unpack_from(buf, rec + fmt_field_off)[0]
        start, ln = rec + (loc & 0xFFFF), loc >> 16
    else:
        start, ln = rec + fmt_field_off, reclen - fmt_field_off
    s = buf[start:start + ln]
    return s.split(b"\0", 1)[0].decode("utf-8", "replace").rstrip("\n")


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


def cmdline_names(saved_cmdlines: str) -> dict[int, str]:
    """Task names by pid from ``saved_cmdlines`` (``pid comm`` lines)."""
    out = {}
    for line in saved_cmdlines.splitlines():
        p, _, c = line.strip().partition(" ")
        if p.isdigit():
            out[int(p)] = c
    return out


class RecordColumns:
    """The columns of every record read, filled in one event type at a time.

    ``buf`` holds all pages; record ``i``'s payload starts at ``off[i]`` and is
    ``reclen[i]`` bytes long.  ``call_insn_size`` turns a return address into its
    call site; ``sites`` is the inline probes' table (manifest ``inline_sites``)."""

    def __init__(self, buf: bytes, rec_ts: np.ndarray, rec_cpu: np.ndarray, off: np.ndarray,
                 reclen: np.ndarray, call_insn_size: int, sites: dict[str, dict[str, Any]],
                 kprobe_irqs_off_unreliable: bool) -> None:
        n = len(off)
        self.buf = buf
        self.arr = arr = np.frombuffer(buf, dtype=np.uint8)
        self.off = off
        self.reclen = reclen
        self.rec_ts = rec_ts
        self.rec_cpu = rec_cpu
        self.call_insn_size = call_insn_size
        self.sites = sites
        self.kprobe_irqs_off_unreliable = kprobe_irqs_off_unreliable
        # every record starts with the 8-byte common header (type, flags, preempt count, pid)
        self.hdr_ok = hdr_ok = (reclen >= 8) & (off + 8 <= len(arr))
        hoff = np.where(hdr_ok, off, 0)
        self.etype = np.where(hdr_ok, _gather(arr, hoff, 2, False).astype(np.int64), -1)
        self.flags = flags = _gather(arr, hoff + 2, 1, False)
        pc = _gather(arr, hoff + 3, 1, False)
        pid = _gather(arr, hoff + 4, 4, True)
        self.rec_pid = pid  # the pid column is moved into the frame before the comms
        self.cols: dict[str, Any] = {
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
        self.kind = CatColumn(n, "other")
        self.event = CatColumn(n, "")
        self.lock_type = CatColumn(n, "")
        self.lock_flags = CatColumn(n, "")
        self.func = CatColumn(n, "")
        self.lock_name = CatColumn(n, "")
        self.keep = np.ones(n, dtype=bool)
        self.rejected: dict[str, int] = {}
        self.rejected_mask = np.zeros(n, dtype=bool)
        if not hdr_ok.all():
            self.reject(np.nonzero(~hdr_ok)[0], "records shorter than a header")
        self.comms: dict[int, str] = {}
        # the names the context switches gave, per CPU, in record order (a trace decoded
        # in batches puts ``comms`` together from them: tracer.decode_stream)
        self.comms_by_cpu: dict[int, dict[int, str]] = {}
        self.stacks: list[tuple[int, ...]] = []
        self.stack_rows: list[tuple[int, int]] = []  # (row of the stack record, stack id)
        self.counts: dict[str, int] = {}
        # calibration: the IRQ state a probe fetched (1 off, 0 on, -1 none) and the
        # kind of each of our probe rows (1 kprobe, 2 kretprobe, 3 mid-function kprobe)
        self.irq_state = np.full(n, -1, np.int8)
        self.pkind = np.zeros(n, np.int8)
        self.cal_rows: dict[str, np.ndarray] = {}
        self.msec_rows: list[SectionRow] = []

    def read_cmdlines(self, saved_cmdlines: str) -> None:
        """Task names from ``saved_cmdlines``."""
        self.comms.update(cmdline_names(saved_cmdlines))

    # -- helpers of the readers ---------------------------------------------------------

    def reject(self, rows: np.ndarray, why: str) -> None:
        """Drop ``rows`` from the events, counted under ``why`` (and marked as rejected)."""
        self.keep[rows] = False
        self.rejected_mask[rows] = True
        self.kind[rows] = "other"
        self.rejected[why] = self.rejected.get(why, 0) + int(len(rows))

    def fld(self, f: EventFormat, name: str, rows: np.ndarray, signed: bool | None = None
            ) -> np.ndarray:
        fd = f.fields[name]
        return _gather(self.arr, self.off[rows] + fd.offset, fd.size,
                       fd.signed if signed is None else signed)

    def call_site(self, f: EventFormat, rows: np.ndarray) -> np.ndarray:
        # a probe on an inlined lock has no return address: it is the call site
        if "ret" in f.fields:
            return self.fld(f, "ret", rows, False) - np.uint64(self.call_insn_size)
        return self.fld(f, "__probe_ip", rows, False)

    def fetch_irq_state(self, f: EventFormat, rows: np.ndarray) -> None:
        for fname, (mask, set_means_off) in IRQ_STATE_FIELDS.items():
            if fname in f.fields:
                v = self.fld(f, fname, rows, False)
                self.irq_state[rows] = ((v & np.uint64(mask)) != 0) == set_means_off

    def strings(self, f: EventFormat, field: str, rows: np.ndarray) -> list[str]:
        """The string field ``field`` of each row."""
        nf = f.fields[field]
        return [_string_at(self.buf, int(self.off[r]), nf.offset, nf.is_data_loc,
                           int(self.reclen[r])) for r in rows.tolist()]

    # -- one event type -----------------------------------------------------------------

    def read_type(self, tid: Any, f: EventFormat | None) -> None:
        """Fill in the rows of every record of type ``tid`` (``f``: its format, if known)."""
        rows = np.nonzero(self.etype == tid)[0]
        name = f.full_name if f else f"unknown/{tid}"
        self.counts[name] = int(len(rows))
        self.event[rows] = name
        if f is None:
            return
        # the guest wrote both the records and their formats: a record shorter than
        # what its format says it holds, a field of a size no C type has, or a field
        # the decoder needs that the format lacks rejects those records, counted
        need = max((fd.offset + fd.size for fd in f.fields.values()
                    if not fd.is_data_loc), default=0)
        short = rows[self.reclen[rows] < need]
        if len(short):
            self.reject(short, f"{name}: records shorter than the format")
            rows = rows[self.reclen[rows] >= need]
        try:
            self._read(f, name, rows)
        except (KeyError, ValueError, OverflowError, IndexError, struct.error) as e:
            self.reject(rows, f"{name}: {type(e).__name__}: {e}")

    def _read(self, f: EventFormat, name: str, rows: np.ndarray) -> None:
        ours = parse_event_name(name)
        if ours is None and f.system == GROUP and f.name.startswith(calibration.CAL_PREFIX):
            self.cal_rows[f.name.removeprefix(calibration.CAL_PREFIX)] = rows
            self.fetch_irq_state(f, rows)
        if ours is not None:
            self._probe(f, rows, *ours)
        elif f.system == GROUP and (chunk := module_sections.parse_event(f.name)) is not None:
            self.keep[rows] = False  # for the symbolizer, not an event of the analysis
            self._module_sections(f, chunk, rows)
        elif f.system == "kmem" and "gfp_flags" in f.fields:
            self._alloc(f, rows)
        elif f.system == "kmem" and f.name in ("kfree", "kmem_cache_free"):
            self.kind[rows] = "free"
            self.cols["ptr"][rows] = self.fld(f, "ptr", rows, False)
            self.cols["ip"][rows] = self.fld(f, "call_site", rows, False) - np.uint64(
                self.call_insn_size)
        elif name == "sched/sched_switch":
            self._switch(f, rows)
        elif name in ("lock/lock_acquire", "lock/lock_release") and "lockdep_addr" in f.fields:
            self._lockdep(f, name, rows)
        elif name in ("irq/irq_handler_entry", "irq/irq_handler_exit"):
            self.kind[rows] = "irq_entry" if name.endswith("entry") else "irq_exit"
            self.cols["value"][rows] = self.fld(f, "irq", rows, True)
            if "name" in f.fields:
                self.func[rows] = self.strings(f, "name", rows)
        elif name in ("irq/softirq_entry", "irq/softirq_exit"):
            self.kind[rows] = "softirq_entry" if name.endswith("entry") else "softirq_exit"
            vec = self.fld(f, "vec", rows, False).astype(np.int64)
            self.cols["value"][rows] = vec
            self.func[rows] = [SOFTIRQ_NAMES[v] if v < len(SOFTIRQ_NAMES) else str(v)
                               for v in vec]
        elif name in ("module/module_load", "module/module_free"):
            self.kind[rows] = "module_load" if name.endswith("load") else "other"
            self.func[rows] = self.strings(f, "name", rows)
        elif name == "ftrace/print":
            self._markers(f, rows)
        elif name == "ftrace/kernel_stack":
            self._stacks(f, rows)
        elif name.startswith(("timer/timer_expire", "workqueue/")) or (
                name == "sched/sched_kthread_stop"):
            self._wait_side(f, name, rows)

    # -- the readers, by event ----------------------------------------------------------

    def _probe(self, f: EventFormat, rows: np.ndarray, role: str, fn: str) -> None:
        """Rows of one of our kprobes/kretprobes (tracer.probes)."""
        cols = self.cols
        if self.kprobe_irqs_off_unreliable:
            cols["irqs_off"][rows] = False
        self.fetch_irq_state(f, rows)
        self.pkind[rows] = 2 if role == "lr" else (3 if INLINE_SUFFIX in f.name else 1)
        if role in ("lk", "ul"):
            self._lock(f, rows, role, fn)
        elif role in ("li", "lc"):
            self._lock_init(f, fn, rows)
        elif role == "lr":
            self.kind[rows] = "lock_return"
            lf = LOCK_FUNCS.get(fn)
            self.lock_type[rows] = lf.lock_type if lf else ""
            self.lock_flags[rows] = "+".join(lf.flags) if lf else ""
            if "rv" in f.fields:  # conditional acquires only (tracer.probes)
                cols["value"][rows] = self.fld(f, "rv", rows, True)
            cols["ip"][rows] = self.fld(f, "__probe_ret_ip", rows, False) - np.uint64(
                self.call_insn_size)
        elif role in ("wt", "sg", "qw"):
            self._wait(f, rows, role, fn)
        else:
            self.kind[rows] = "sleep_call"
            self.func[rows] = MIGHT_SLEEP if fn == MIGHT_SLEEP_FUNC else fn
            cols["ip"][rows] = self.call_site(f, rows)

    def _lock(self, f: EventFormat, rows: np.ndarray, role: str, fn: str) -> None:
        """Rows of a lock (``lk``) or unlock (``ul``) probe."""
        cols = self.cols
        self.kind[rows] = "lock_acquire" if role == "lk" else "lock_release"
        lf = LOCK_FUNCS.get(fn)
        self.lock_type[rows] = lf.lock_type if lf else ""
        self.lock_flags[rows] = "+".join(lf.flags) if lf else ""
        if "lock" in f.fields:  # else a static lock: decode_run places it
            cols["lock_addr"][rows] = self.fld(f, "lock", rows, False) + np.uint64(
                int((self.sites.get(f.name) or {}).get("lock", {}).get("addend", 0))
                & (2**64 - 1))
        cols["ip"][rows] = self.call_site(f, rows)
        if "sub" in f.fields:
            cols["value"][rows] = self.fld(f, "sub", rows, True)
        if "val" in f.fields and lf is not None and lf.success:
            # an inlined trylock: taken iff the lock word let it (inline_locks)
            from tracedep.tracer.inline_locks import trylock_taken

            word = self.fld(f, "val", rows, False)
            cols["value"][rows] = word.astype(np.int64)
            self.kind[rows[~trylock_taken(fn, word)]] = "other"

    def _wait(self, f: EventFormat, rows: np.ndarray, role: str, fn: str) -> None:
        """Rows of a wait (``wt``) or signal (``sg``) probe (tracer.wait_probes)."""
        wf = WAIT_FUNCS.get(fn)
        if wf is None:
            return
        self.kind[rows] = {"wt": "wait", "sg": "signal"}.get(role, "work_queued")
        self.func[rows] = fn
        self.lock_type[rows] = "work" if role == "qw" else wf.obj
        self.cols["ip"][rows] = self.call_site(f, rows)
        if "obj" in f.fields:
            self.cols["lock_addr"][rows] = self.fld(f, "obj", rows, False)
        if "wq" in f.fields:  # the workqueue a work item is queued on
            self.cols["ptr"][rows] = self.fld(f, "wq", rows, False)
        self._names(f, "name", rows)

    def _names(self, f: EventFormat, field: str, rows: np.ndarray) -> None:
        """A guest-sent name into ``lock_name``, read inside its record and cleaned."""
        nf = f.fields.get(field)
        if nf is not None:
            self.lock_name[rows] = [
                _bounded_string(self.buf, int(self.off[r]), int(self.reclen[r]), nf)
                for r in rows.tolist()]

    def _wait_side(self, f: EventFormat, name: str, rows: np.ndarray) -> None:
        """The other side of a wait: a work item or timer callback runs, a work item is
        queued, a kthread is stopped (tracer.wait_probes)."""
        cols, fields = self.cols, f.fields
        if "function" in fields:
            cols["ip"][rows] = self.fld(f, "function", rows, False)
        ev = name.partition("/")[2]
        obj = "timer" if "timer" in fields else "work" if "work" in fields else ""
        if obj:
            cols["lock_addr"][rows] = self.fld(f, obj, rows, False)
        if ev in ("timer_expire_entry", "workqueue_execute_start") and obj:
            self.kind[rows] = "callback_entry"
        elif ev in ("timer_expire_exit", "workqueue_execute_end") and obj:
            self.kind[rows] = "callback_exit"
        elif ev == "workqueue_queue_work" and obj:
            self.kind[rows] = "work_queued"
            self._names(f, "workqueue", rows)
        elif ev == "sched_kthread_stop" and "pid" in fields:
            self.kind[rows] = "wait"
            self.func[rows] = "kthread_stop"
            obj = "kthread"
            cols["value"][rows] = self.fld(f, "pid", rows, True).astype(np.int64)
            self._names(f, "comm", rows)
        else:
            return
        self.lock_type[rows] = obj

    def _lock_init(self, f: EventFormat, fn: str, rows: np.ndarray) -> None:
        """Rows of a lock initializer (``li``) or re-keying (``lc``) probe (tracer.lock_init)."""
        cols = self.cols
        if "lock" in f.fields:
            lock = self.fld(f, "lock", rows, False)
        elif "obj" in f.fields and "off" in f.fields:
            moff = self.fld(f, "off", rows, False)
            bad = moff >= np.uint64(OFFSET_MAX)
            lock = self.fld(f, "obj", rows, False) + np.where(bad, np.uint64(0), moff)
            lock[bad] = 0
        else:
            return
        keep = lock != 0
        rows, lock = rows[keep], lock[keep]
        self.kind[rows] = "lock_init"
        self.func[rows] = fn
        cols["lock_addr"][rows] = lock
        cols["ip"][rows] = self.call_site(f, rows)
        if "key" in f.fields:
            cols["key_addr"][rows] = self.fld(f, "key", rows, False)
        if "mode" in f.fields:  # a directory re-key's i_mode
            cols["value"][rows] = self.fld(f, "mode", rows, False).astype(np.int64)
        self._names(f, "name", rows)

    def _module_sections(self, f: EventFormat, chunk: int, rows: np.ndarray) -> None:
        """Rows of the do_init_module probes (tracer.module_sections), kept in ``msec_rows``."""
        if "name" not in f.fields or "n" not in f.fields:
            return
        buf = self.buf
        n = self.fld(f, "n", rows, False)
        addrs = [self.fld(f, f"a{j}", rows, False) if f"a{j}" in f.fields else None
                 for j in range(module_sections.CHUNK)]
        for i, r in enumerate(rows.tolist()):
            o, ln = int(self.off[r]), int(self.reclen[r])
            secs = []
            for j, a in enumerate(addrs):
                sf = f.fields.get(f"s{j}")
                if a is None or sf is None:
                    break
                secs.append((_bounded_string(buf, o, ln, sf), int(a[i])))
            self.msec_rows.append((int(self.rec_ts[r]), int(self.rec_cpu[r]), chunk,
                                   _bounded_string(buf, o, ln, f.fields["name"]), int(n[i]),
                                   secs))

    def _alloc(self, f: EventFormat, rows: np.ndarray) -> None:
        cols = self.cols
        self.kind[rows] = "alloc"
        cols["gfp"][rows] = self.fld(f, "gfp_flags", rows, False).astype(np.uint32)
        if "ptr" in f.fields:
            cols["ptr"][rows] = self.fld(f, "ptr", rows, False)
        if "bytes_alloc" in f.fields:
            cols["bytes"][rows] = self.fld(f, "bytes_alloc", rows, False).astype(np.int64)
        elif "order" in f.fields:
            cols["bytes"][rows] = 4096 << self.fld(f, "order", rows, True).astype(np.int64)
        if "call_site" in f.fields:
            cols["ip"][rows] = self.fld(f, "call_site", rows, False) - np.uint64(
                self.call_insn_size)
        self.func[rows] = f.name

    def _switch(self, f: EventFormat, rows: np.ndarray) -> None:
        buf, comms = self.buf, self.comms
        self.kind[rows] = "sched_switch"
        self.cols["value"][rows] = self.fld(f, "prev_state", rows, False).astype(np.int64)
        nf = f.fields["next_comm"]
        pf = f.fields["prev_comm"]
        npid = self.fld(f, "next_pid", rows, True)
        ppid = self.fld(f, "prev_pid", rows, True)
        self.cols["target_pid"][rows] = npid.astype(np.int32)
        for r, a, b in zip(rows.tolist(), ppid.tolist(), npid.tolist(), strict=True):
            o = int(self.off[r])
            mine = self.comms_by_cpu.setdefault(int(self.rec_cpu[r]), {})
            comms[a] = mine[a] = buf[o + pf.offset:o + pf.offset + pf.size].split(
                b"\0")[0].decode("utf-8", "replace")
            comms[b] = mine[b] = buf[o + nf.offset:o + nf.offset + nf.size].split(
                b"\0")[0].decode("utf-8", "replace")

    def _lockdep(self, f: EventFormat, name: str, rows: np.ndarray) -> None:
        # lockdep's own events (CONFIG_LOCKDEP kernels): the lockdep_map is the
        # instance, its name lockdep's class name (in ``func``); type, flags and
        # call site come from our probe of the same acquisition (lockdep_events)
        self.kind[rows] = "lock_acquire" if name.endswith("acquire") else "lock_release"
        self.cols["lock_addr"][rows] = self.fld(f, "lockdep_addr", rows, False)
        self.func[rows] = self.strings(f, "name", rows)
        if "flags" in f.fields:
            fl = self.fld(f, "flags", rows, False)
            self.lock_flags[rows[(fl & np.uint64(1)) != 0]] = "trylock"

    def _markers(self, f: EventFormat, rows: np.ndarray) -> None:
        self.kind[rows] = "marker"
        bf = f.fields["buf"]
        texts = [_string_at(self.buf, int(self.off[r]), bf.offset, False, int(self.reclen[r]))
                 for r in rows.tolist()]
        self.func[rows] = texts
        self.cal_rows["marker"] = rows[np.asarray([t == calibration.MARKER for t in texts],
                                                  dtype=bool)]

    def _stacks(self, f: EventFormat, rows: np.ndarray) -> None:
        self.keep[rows] = False
        _ = f.fields["size"]  # a stack record without its size is rejected (KeyError)
        cf = f.fields["caller"]
        nent = self.fld(f, "size", rows, True)
        for r, k in zip(rows.tolist(), nent.tolist(), strict=True):
            o = int(self.off[r])
            room = (int(self.reclen[r]) - cf.offset) // 8
            k = max(0, min(int(k), room))
            frames = struct.unpack_from(f"<{k}Q", self.buf, o + cf.offset)
            self.stack_rows.append((r, len(self.stacks)))
            self.stacks.append(tuple(x for x in frames if x))

    # -- the frame ----------------------------------------------------------------------

    def events(self, gap_ts: np.ndarray, gap_cpu: np.ndarray, gap_kind: str,
               gap_event: str) -> pd.DataFrame:
        """The events frame (tracer.schema): the records kept, with their stack ids,
        and a ``gap`` row at each of ``gap_ts``/``gap_cpu`` (before the rejected
        records' own times), in time order (then CPU, then record order).

        Built one column at a time, each moved out of these columns as it is
        placed, so that the records' columns and the frame are never both whole:
        the decode's peak memory is about one copy of the events.  The columns go into
        the frame as they are (pandas would copy each one set on a frame)."""
        cols = self.cols
        # A conditional stacktrace trigger records its stack right after the event, on
        # the same CPU: hand the stack to the record before it.
        if self.stack_rows:
            srow = np.array([r for r, _ in self.stack_rows], dtype=np.int64)
            sid = np.array([s for _, s in self.stack_rows], dtype=np.int32)
            cpu_arr = cols["cpu"]
            # records are in per-CPU order here (concatenated CPU by CPU)
            prev = srow - 1
            ok = (prev >= 0) & (cpu_arr[np.maximum(prev, 0)] == cpu_arr[srow]) & self.keep[
                np.maximum(prev, 0)]
            cols["stack_id"][prev[ok]] = sid[ok]
        # a rejected record is a gap too: what it said is unknown
        rej = np.nonzero(self.rejected_mask)[0]
        g_ts = np.concatenate([gap_ts, self.rec_ts[rej]]).astype(np.int64) - 1
        g_cpu = np.concatenate([gap_cpu, self.rec_cpu[rej]]).astype(np.int16)
        sel = np.nonzero(self.keep)[0]
        ng = len(g_ts)
        order = np.lexsort((np.concatenate([cols["cpu"][sel].astype(np.int16), g_cpu]),
                            np.concatenate([cols["ts_ns"][sel].astype(np.int64), g_ts])))
        comms_idle = {**self.comms, 0: "<idle>"}
        cats = {"kind": self.kind, "event": self.event, "lock_type": self.lock_type,
                "lock_flags": self.lock_flags, "func": self.func, "lock_name": self.lock_name}
        gap_values = {"ts_ns": g_ts, "cpu": g_cpu, "kind": gap_kind, "event": gap_event}
        out: dict[str, Any] = {}
        for name, dtype in schema.COLUMNS.items():
            if name == "comm":  # gap rows have none
                upids, pinv = sorted_unique(self.rec_pid[sel])
                names = [comms_idle.get(int(p), "<...>") for p in upids] + [""]
                inv = np.concatenate([pinv.reshape(-1), np.full(ng, len(upids))])
                out[name] = unique_names(names, inv[order])
                continue
            if name in cats:
                col = cats[name]
                g = gap_values.get(name, "")
                codes = np.concatenate([col.codes[sel], np.full(ng, col.code(str(g)), np.int32)])
                out[name] = pd.Categorical.from_codes(
                    codes[order], categories=pd.Index(col.cats, dtype=object))
                col.codes = np.zeros(0, np.int32)
                continue
            arr = cols.pop(name)
            g = gap_values.get(name)
            if g is None:
                g = np.full(ng, -1 if name in ("stack_id", "target_pid") else 0, dtype=dtype)
            out[name] = np.concatenate([arr[sel].astype(dtype, copy=False),
                                        np.asarray(g, dtype=dtype)])[order]
            del arr
        return pd.DataFrame(out, index=pd.RangeIndex(len(order)), copy=False)
