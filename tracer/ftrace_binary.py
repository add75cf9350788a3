"""Decode binary ftrace ring-buffer pages (``trace_pipe_raw``) into the events frame.

The pages are walked in :mod:`tracer.ring_pages` (where each record is, which pages
could not be read whole) and their records read into columns one event type at a
time in :mod:`tracer.event_rows`.  Here the two are put together: the calibration
corrects our probes' context columns, every place events are missing becomes a
``gap`` row, and a run directory's static locks get their runtime addresses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tracedep.common.run_manifest import RunManifest
from tracedep.errors import TraceFormatError
from tracedep.tracer import calibration, module_sections, schema, unseen_switches
from tracedep.tracer.event_rows import MIGHT_SLEEP as MIGHT_SLEEP  # analysis.rules reads it here
from tracedep.tracer.event_rows import CatColumn, RecordColumns, SectionRow
from tracedep.tracer.ftrace_formats import EventFormat, parse_format, parse_header_page
from tracedep.tracer.retention import raw_files, read_raw
from tracedep.tracer.ring_pages import (
    PAGE_BACKWARDS,
    PAGE_DAMAGED,
    PAGE_TORN,
    CpuCursor,
    page_gaps,
    walk_buffers,
)
from tracedep.tracer.unseen_switches import SwitchState, UnseenSwitch

if TYPE_CHECKING:  # it imports this module (through decode_stream)
    from tracedep.tracer.window_spill import WindowSpill


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
    calibration: dict[str, dict[str, object]] = field(default_factory=dict)
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
    # the module_sections rows ``module_loads`` was assembled from (a trace decoded in
    # batches assembles them once: a load's rows may lie in two batches)
    section_rows: list[SectionRow] = field(default_factory=list)
    # the events that did not fit the analysis's memory (decode_stream: ``max_rows``)
    cut: Cut | None = None
    # rows per CPU of a trace read a window at a time, whose frame is not kept (the
    # streaming analysis counts them; ``events`` is then empty)
    streamed_per_cpu: dict[int, int] | None = None
    # changes of task on a CPU with no context switch traced (tracer.unseen_switches):
    # each left a gap row; the first, for the reports
    unseen_switches: int = 0
    unseen_switch_first: UnseenSwitch | None = None
    # a cut decode's windows as a stream reads them (tracer.window_spill), so that the
    # analysis streams them without decoding the pages again; it closes them
    windows: WindowSpill | None = None

    def rows_per_cpu(self) -> dict[int, int]:
        """Rows per CPU of the whole trace: the frame's, and those a cut left out."""
        if self.streamed_per_cpu is not None:
            return dict(sorted(self.streamed_per_cpu.items()))
        cpus, n = np.unique(self.events["cpu"].to_numpy(), return_counts=True)
        out = dict(zip(cpus.tolist(), n.tolist(), strict=True))
        for c, m in (self.cut.dropped_per_cpu if self.cut else {}).items():
            out[c] = out.get(c, 0) + m
        return dict(sorted(out.items()))


@dataclass
class Cut:
    """Where the events frame stops short of the trace: the rows after the first
    ``kept`` (in time order) were decoded and counted, not kept."""

    kept: int
    dropped: int
    dropped_per_cpu: dict[int, int]
    at_ns: int  # the first left-out event's time
    end_ns: int  # the trace's last event's time
    why: str = ""  # the memory limit that made it, in words (common.memory_budget)


@dataclass
class Carry:
    """What one batch of pages leaves to the next, when a trace is decoded a batch
    at a time (tracer.decode_stream): the batches then decode as the whole would."""

    cursors: dict[int, CpuCursor] = field(default_factory=dict)  # the walk, per CPU
    # the calibration measured in the first batch (then applied to every batch)
    calibration: dict[str, Any] | None = None
    # per CPU, the gaps its next record follows (pages not read whole before it)
    gap_pending: dict[int, int] = field(default_factory=dict)
    stack_base: int = 0  # stacks of earlier batches: this batch's stack ids follow them
    formats: dict[int, EventFormat] | None = None  # the event formats, parsed once
    # out, per CPU: the stack id of a stack record that opens the batch (it belongs to
    # the record before it: the previous batch's last, if that one was kept)
    leading_stack: dict[int, int] = field(default_factory=dict)
    # out, per CPU: (time, kept) of the batch's last record
    last_record: dict[int, tuple[int, bool]] = field(default_factory=dict)
    # out, per CPU: the names its context switches gave, in record order
    comms_by_cpu: dict[int, dict[int, str]] = field(default_factory=dict)
    # per CPU, the task running at the batch's end (tracer.unseen_switches)
    switches: SwitchState = field(default_factory=SwitchState)


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
    carry: Carry | None = None,
) -> Decoded:
    """Decode per-CPU ring-buffer pages into the events frame.

    ``damaged``: per CPU, a bool per page known to have changed since it was
    recorded (tracer.page_sums); those pages are not read.  Every page that is
    not read whole leaves a ``gap`` row where its events are missing, so that the
    analysis forgets what it believed held there (analysis.heldlocks).
    ``carry``: the pages are the next batch of a trace decoded in batches
    (:class:`Carry`, updated)."""
    try:
        hp = parse_header_page(header_page)
    except ValueError as e:
        raise TraceFormatError(f"control.log: {e}") from None
    if carry is not None and carry.formats is None:
        carry.formats = _formats(formats)
    fmts = carry.formats if carry is not None and carry.formats is not None else _formats(formats)
    if carry is not None:  # this batch's own, even when it has no record
        carry.leading_stack, carry.last_record, carry.comms_by_cpu = {}, {}, {}
    recs, statuses, buf, damaged_pages = walk_buffers(
        buffers, hp, native, damaged, carry.cursors if carry else None)
    rec_cpu, rec_ts, off, reclen32 = recs.arrays()
    gap_cpu, gap_ts = page_gaps(statuses, rec_cpu, rec_ts, off, hp.page_size)
    if carry is not None:
        gap_cpu, gap_ts = _carried_gaps(carry, statuses, rec_cpu, rec_ts, off, hp.page_size,
                                        gap_cpu, gap_ts)
    # every record read, stacks and rejected ones too: what the guest's ring buffer
    # counted as read ("read events" in per_cpu/cpuN/stats), when nothing was lost
    per_cpu = np.bincount(rec_cpu.astype(np.intp)) if len(rec_cpu) else np.zeros(0, np.intp)
    records_per_cpu = {int(c): int(per_cpu[c]) for c in np.flatnonzero(per_cpu)}
    if len(off) == 0:
        return Decoded(schema.empty(), [], {}, recs.torn_pages, recs.missed_events, 0, {},
                       backwards_pages=recs.backwards_pages, damaged_pages=damaged_pages)
    rc = RecordColumns(buf, rec_ts, rec_cpu, off, reclen32.astype(np.int64), call_insn_size,
                       inline_sites or {}, kprobe_irqs_off_unreliable)
    rc.read_cmdlines(saved_cmdlines)
    # the types present (bincount: a type id is a u16, and a sort of every record is not)
    for tid in np.flatnonzero(np.bincount(rc.etype[rc.hdr_ok])):
        rc.read_type(tid, fmts.get(int(tid)))
    cal = _calibrate(rc.cols, rc.cal_rows, rc.flags, rc.irq_state, rc.pkind,
                     kprobe_irqs_off_unreliable, rc.kind, rc.lock_type,
                     carry.calibration if carry else None)
    if carry is not None:
        _batch_edges(carry, rc)
    unseen = _unseen_switches(rc, gap_cpu, gap_ts, carry)
    if unseen:
        gap_cpu = np.concatenate([gap_cpu, np.array([u.cpu for u in unseen], np.int16)])
        gap_ts = np.concatenate([gap_ts, np.array([u.ts_ns for u in unseen], np.int64)])
    events = rc.events(gap_ts, gap_cpu, "gap", GAP_EVENT)
    if carry is not None and carry.stack_base:
        sid = events["stack_id"].to_numpy()
        events["stack_id"] = np.where(sid >= 0, sid + carry.stack_base, sid).astype(np.int32)
    n_gaps = int((events["kind"] == "gap").sum())
    return Decoded(events, rc.stacks, rc.counts, recs.torn_pages, recs.missed_events,
                   len(events) - n_gaps, rc.comms, cal, backwards_pages=recs.backwards_pages,
                   rejected=rc.rejected, damaged_pages=damaged_pages,
                   module_loads=module_sections.assemble(rc.msec_rows),
                   records_per_cpu=records_per_cpu, section_rows=rc.msec_rows,
                   unseen_switches=len(unseen), unseen_switch_first=unseen[0] if unseen else None)


def _unseen_switches(rc: RecordColumns, gap_cpu: np.ndarray, gap_ts: np.ndarray,
                     carry: Carry | None) -> list[UnseenSwitch]:
    """The kept records that follow a change of task no sched_switch explains; the
    places already known missing (page gaps, rejected records) are not judged."""
    sel = np.nonzero(rc.keep)[0]
    code = rc.kind.index.get("sched_switch", -1)  # none traced: no task is known to run
    rej = np.nonzero(rc.rejected_mask)[0]
    return unseen_switches.find(
        rc.rec_cpu[sel], rc.rec_pid[sel], rc.rec_ts[sel], rc.kind.codes[sel] == code,
        rc.cols["target_pid"][sel],
        np.concatenate([gap_cpu, rc.rec_cpu[rej]]), np.concatenate([gap_ts, rc.rec_ts[rej]]),
        carry.switches if carry is not None else None)


def _formats(formats: dict[str, str]) -> dict[int, EventFormat]:
    """The event formats the guest sent, by event type id."""
    fmts: dict[int, EventFormat] = {}
    for name, text in formats.items():
        f = parse_format(name, text)
        if f is not None:
            fmts[f.id] = f
    return fmts


GAP_EVENT = "tracedep/gap"  # the event name of gap rows (no probe has it)


def _carried_gaps(carry: Carry, statuses: list[tuple[int, int, np.ndarray]],
                  rec_cpu: np.ndarray, rec_ts: np.ndarray, off: np.ndarray, psize: int,
                  gap_cpu: np.ndarray, gap_ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`page_gaps` across batches: a gap a batch's pages call for after its last
    record goes before the next batch's first record of that CPU."""
    cpus, times = [gap_cpu], [gap_ts]
    for cpu, base, status in statuses:
        mine = np.nonzero(rec_cpu == cpu)[0]
        n = carry.gap_pending.pop(cpu, 0)
        if n and len(mine):
            cpus.append(np.full(n, cpu, np.int16))
            times.append(np.full(n, rec_ts[mine[0]], np.int64))
        elif n:
            carry.gap_pending[cpu] = n
        bad = np.nonzero(status)[0]
        if not len(bad):
            continue
        after = (status[bad] & (PAGE_TORN | PAGE_BACKWARDS | PAGE_DAMAGED)) != 0
        target = bad + np.where(after, 1, 0)  # the first page whose records follow it
        last_page = int((off[mine[-1]] - base) // psize) if len(mine) else -1
        left = int((target > last_page).sum())
        if left:
            carry.gap_pending[cpu] = carry.gap_pending.get(cpu, 0) + left
    return np.concatenate(cpus).astype(np.int16), np.concatenate(times).astype(np.int64)


def _batch_edges(carry: Carry, rc: RecordColumns) -> None:
    """What this batch leaves to the next (:class:`Carry`'s out fields)."""
    if rc.stack_rows and rc.stack_rows[0][0] == 0:
        carry.leading_stack[int(rc.rec_cpu[0])] = carry.stack_base + rc.stack_rows[0][1]
    carry.comms_by_cpu = rc.comms_by_cpu
    cpus: list[int] = (np.flatnonzero(np.bincount(rc.rec_cpu.astype(np.intp))).tolist()
                       if len(rc.rec_cpu) else [])
    for cpu in cpus:
        last = int(np.nonzero(rc.rec_cpu == cpu)[0][-1])
        carry.last_record[cpu] = (int(rc.rec_ts[last]), bool(rc.keep[last]))


def _calibrate(cols: dict[str, Any], cal_rows: dict[str, np.ndarray], flags: np.ndarray,
               irq_state: np.ndarray, pkind: np.ndarray, unreliable_default: bool,
               kind: CatColumn, lock_type: CatColumn,
               measured: dict[str, Any] | None = None) -> dict[str, Any]:
    """Measure the calibration records and correct our probes' context columns.
    ``measured``: what an earlier batch of the trace measured (kinds it did not see
    are measured here)."""
    depth = cols["preempt_depth"]
    cal = calibration.measure(cal_rows, flags, depth, irq_state, cols["pid"])
    if measured is not None:
        # the first measurement stands; ``samples`` stays this batch's, for the sum
        cal = {**cal, **{k: {**v, "samples": (cal.get(k) or {}).get("samples", 0)}
                         for k, v in measured.items() if not k.startswith("_")}}
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
    # the votes, for a trace decoded in batches to sum (tracer.decode_stream)
    cal["_spin_votes"] = (int(rel.sum()), int((depth[rel] >= 1).sum()))
    cal["_spin_preempt"] = spin_preempt(*cal["_spin_votes"])
    return cal


def spin_preempt(releases: int, counted: int) -> bool | None:
    """Does preempt_count count held spinlocks: at a spinning lock's release, out of
    process context, is the depth >= 1 in most of them (None: too few to tell)."""
    return counted / releases > 0.5 if releases >= 5 else None


def read_run_buffers(run_dir: Path) -> dict[int, bytes]:
    """Each CPU's raw pages (``trace/cpuN.raw``, or ``.raw.gz``: tracer.retention)."""
    return {cpu: read_raw(p) for cpu, p in raw_files(run_dir / "trace").items()}


def has_static_sites(sites: dict[str, dict[str, Any]]) -> bool:
    return any((s.get("lock") or {}).get("kind") == "static" for s in sites.values())


def place_static_locks(ev: pd.DataFrame, module_loads: list[module_sections.KernelLoad],
                       sites: dict[str, dict[str, Any]], info: RunManifest,
                       load_ts: dict[str, list[int]]) -> None:
    """Runtime addresses of the static locks of inline probes (no fetch-arg can give
    them), in place.  ``load_ts``: module name → times of its loads in the trace before
    ``ev`` (updated with those in ``ev``; a trace decoded in windows passes one dict)."""
    from tracedep.tracer.inline_locks import static_lock_addresses

    loads = ev[ev["kind"] == "module_load"]
    for name, t in zip(loads["func"].astype(str), loads["ts_ns"].tolist(), strict=True):
        load_ts.setdefault(name, []).append(int(t))
    where = static_lock_addresses(sites, info, ev["event"].astype(str).to_numpy(),
                                  ev["ts_ns"].to_numpy(), load_ts, module_loads)
    if where:
        la = ev["lock_addr"].to_numpy().copy()
        idx = np.fromiter(where.keys(), dtype=np.int64, count=len(where))
        la[idx] = np.fromiter(where.values(), dtype=np.uint64, count=len(where))
        ev["lock_addr"] = la
