"""The analysis of a trace a window of events at a time, in memory that does not grow
with the trace (DESIGN "Memory"; ``pipeline.analyze`` holds the whole frame).

Four passes over the decoder's windows (tracer.decode_stream), each holding one window:

1. survey: the module loads (for the run's symbols), the scheduler's own preempt depth
   (``replay_inputs.switch_baseline``), the counts and losses of the whole trace;
2. classes: the class engines' first pass (analysis.class_stream), for the locks and
   for the objects the wait graph names;
3. replay: the classes again with the first pass's plan, the held-lock replay
   (carried across windows, in C), and what reads its acquisitions, fed from what
   each window settled (``Replayer.drain``) and what is still open: the wait graph
   (analysis.wait_stream, analysis.hold_stream), the PREEMPT_RT allocation cases
   (analysis.alloc_stream), the class statistics and forced releases, the coverage;
4. rows: the rows the replay, the waits and the cases name, into the rules' store
   (analysis.row_store).

Then the rules run over the store, as ``pipeline.conclude`` runs them for the whole
frame: the findings are the whole frame's.  What it keeps grows with classes, edges,
held locks and the findings' witnesses (the sleeps in atomic context one per verdict:
analysis.sleep_fold), not with events.  The survey decodes the pages and keeps its
windows on disk (tracer.window_spill) for the other passes, which read them back
instead of decoding again; without room on disk for them, each pass decodes the trace
again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from tracedep.analysis import classes as lock_classes
from tracedep.analysis import missing, pipeline, row_store, rt_rules, waits
from tracedep.analysis.alloc_stream import AllocationStream
from tracedep.analysis.class_stats import StatsAcc
from tracedep.analysis.class_stream import ClassEngine, ClassPlan
from tracedep.analysis.coverage import ModuleCoverage, coverage
from tracedep.analysis.findings import Analysis
from tracedep.analysis.heldlocks import Replayer
from tracedep.analysis.hold_stream import HoldStream, OpenSites
from tracedep.analysis.nesting import NestingJudge
from tracedep.analysis.replay_types import Replay, RowSet
from tracedep.analysis.run_symbols import RunSymbols
from tracedep.analysis.sleep_fold import SleepFold
from tracedep.analysis.trace import (
    check_traced,
    completeness,
    module_load_times,
    place_fixed_locks,
)
from tracedep.analysis.trace_model import Trace
from tracedep.analysis.wait_stream import WaitBuilder
from tracedep.common import heap
from tracedep.common.memory_budget import whole_rows
from tracedep.common.run_manifest import RunManifest
from tracedep.tracer import schema
from tracedep.tracer.decode_stream import (
    BATCH_PAGES,
    Prefix,
    StreamDecoder,
    Window,
    comm_column,
)
from tracedep.tracer.ftrace_binary import Decoded
from tracedep.tracer.window_cuts import join_frames, whole_timestamps
from tracedep.tracer.window_spill import ArraySpill, WindowSpill, events_bound, room_for

_LOAD_EVENTS = ("module/module_load", "module/module_free")

Aids = Callable[[Trace], tuple[NestingJudge | None, lock_classes.ClassNamer | None]]


def too_long(info: RunManifest) -> bool:
    """Does this run's trace hold more events than the whole frame may (the events
    its run decoded when it ended; common.memory_budget)?"""
    rows, _ = whole_rows()
    n = info.lost.decoded_events
    return rows is not None and n is not None and n > rows


@dataclass
class How:
    """How a stream reads the trace: ``batch_pages`` per CPU and batch (the decoder's
    default if None; tests make them small), and ``say``: where its progress lines go
    (a terminal's stderr), one per pass and every ``every_s`` seconds within one."""

    batch_pages: int | None = None
    say: Callable[[str], None] | None = None
    every_s: float = 30.0
    total: int | None = None  # the trace's events, when the run counted them
    # a run still being written: the part every CPU has sent (tracer.live_prefix)
    prefix: Prefix | None = None
    # the survey's decode (its calibration, for a manifest the run has not finished)
    on_decoded: Callable[[Decoded], None] | None = None
    # the survey's windows kept on disk for the later passes (room permitting)
    spill: bool = True
    # the run's own decode, cut for memory, with its windows kept (Decoded.windows): the
    # survey reads them instead of decoding the pages again (and closes them)
    decoded: Decoded | None = None


def windows(run_dir: Path, info: RunManifest, how: How | None = None, label: str = ""
            ) -> tuple[StreamDecoder, Iterator[Window]]:
    """A fresh decode of the run, its windows cut where no time stamp is split."""
    how = how or How()
    dec = StreamDecoder(run_dir, info, how.batch_pages or BATCH_PAGES, how.prefix)
    return dec, _meter(whole_timestamps(dec.windows()), how, label)


def _meter(wins: Iterator[Window], how: How, label: str) -> Iterator[Window]:
    return _metered(wins, how, label) if how.say is not None else wins


def _metered(wins: Iterator[Window], how: How, label: str) -> Iterator[Window]:
    assert how.say is not None
    t0 = last = time.monotonic()
    rows = 0
    for w in wins:
        yield w
        rows += len(w.events)
        now = time.monotonic()
        if now - last >= how.every_s:
            last = now
            of = f" of {how.total:,} ({100 * rows / how.total:.0f} %)" if how.total else ""
            how.say(f"tracedep: analysis {label}: {rows:,} events{of}, "
                    f"{rows / max(now - t0, 1e-9):,.0f} events/s")
    how.say(f"tracedep: analysis {label}: done, {rows:,} events in "
            f"{time.monotonic() - t0:.0f} s")


@dataclass
class Survey:
    """Pass 1: what the later passes need to know of the whole trace first."""

    trace: Trace  # its events empty: the windows hold them
    events: int
    baseline: int
    per_cpu: dict[int, int]  # rows per CPU
    names: dict[int, str]  # the task names the trace ends with
    spill: WindowSpill | None  # the windows, for the later passes (None: decode again)
    how: How

    def windows(self, label: str, rows: np.ndarray | None = None) -> Iterator[Window]:
        """The trace's windows again: read back from the spill, or decoded again.
        ``rows`` (sorted): the windows without one of them may be left out."""
        if self.spill is not None and self.spill.usable:
            return _meter(self.spill.windows(rows), self.how, label)
        return windows(self.trace.source, self.trace.info, self.how, label)[1]

    def close(self) -> None:
        if self.spill is not None:
            self.spill.close()


def _spill_for(run_dir: Path, info: RunManifest, how: How) -> WindowSpill | None:
    """A spill for the survey's windows, if the disk has room for them (the events the
    run counted, else as many as its pages could hold)."""
    if not how.spill:
        return None
    events = info.lost.decoded_events
    if events is None or how.prefix is not None:
        events = max(events or 0, events_bound(run_dir))
    if not room_for(events):
        if how.say is not None:
            how.say("tracedep: analysis: no room on disk to keep the decoded windows "
                    "between passes; each pass decodes the pages again")
        return None
    return WindowSpill()


def survey(run_dir: Path, info: RunManifest, how: How | None = None) -> Survey:
    how = how or How()
    pre = how.decoded
    if pre is not None and pre.windows is not None and pre.windows.usable:
        # the run's decode: its windows are read back, its counts are the trace's
        spill: WindowSpill | None = pre.windows
        source: StreamDecoder | Decoded = replace(pre, events=schema.empty(), cut=None,
                                                  windows=None)
        wins = _meter(pre.windows.windows(), how, "pass 1/4 (survey, the run's decode)")
    else:
        source, wins = windows(run_dir, info, how, "pass 1/4 (survey)")
        spill = _spill_for(run_dir, info, how)
    try:
        return _survey(run_dir, info, how, source, wins, spill)
    except BaseException:
        if spill is not None:
            spill.close()
        raise


def _survey(run_dir: Path, info: RunManifest, how: How, source: StreamDecoder | Decoded,
            wins: Iterator[Window], spill: WindowSpill | None) -> Survey:
    """``source``: the decoder of ``wins``, which fills ``spill``; or the run's decode,
    whose windows ``wins`` already are."""
    write = isinstance(source, StreamDecoder)
    loads: list[pd.DataFrame] = []
    depths = np.zeros(1, dtype=np.int64)
    n = 0
    per_cpu: dict[int, int] = {}
    for w in wins:
        ev = w.events
        schema.validate(ev)
        if spill is not None and write:
            spill.add(w)
        n += len(ev)
        cpus, counts = np.unique(ev["cpu"].to_numpy(), return_counts=True)
        for c, k in zip(cpus.tolist(), counts.tolist(), strict=True):
            per_cpu[c] = per_cpu.get(c, 0) + k
        at = ev["event"].isin(_LOAD_EVENTS).to_numpy()
        if at.any():
            loads.append(ev.loc[at, ["event", "func", "ts_ns"]].astype(
                {"event": object, "func": object}))
        # replay_inputs.switch_baseline, summed over the windows
        sw = ev["preempt_depth"].to_numpy()[((ev["kind"] == "sched_switch").to_numpy())
                                            & (ev["value"].to_numpy() != 0)]
        if len(sw):
            got = np.bincount(sw.astype(np.int64))
            if len(got) > len(depths):
                depths = np.concatenate([depths, np.zeros(len(got) - len(depths), np.int64)])
            depths[:len(got)] += got
    if spill is not None and write:
        spill.close_writing()
        if spill.failed and how.say is not None:
            how.say(f"tracedep: analysis: {spill.failed}")
    decoded = source.decoded() if isinstance(source, StreamDecoder) else source
    decoded.streamed_per_cpu = per_cpu
    if how.on_decoded is not None:
        how.on_decoded(decoded)
    gaps = completeness(info, decoded)
    load_frame = (pd.concat(loads, ignore_index=True) if loads
                  else pd.DataFrame({"event": [], "func": [], "ts_ns": []}))
    syms = RunSymbols.for_run(run_dir, info, module_load_times(load_frame),
                              decoded.module_loads)
    trace = Trace(schema.empty(), decoded.stacks, info, syms, run_dir,
                  gaps + list(syms.warnings))
    return Survey(trace, n, int(depths.argmax()) if depths.any() else 1, per_cpu,
                  decoded.comms, spill, how)


@dataclass
class Plans:
    locks: ClassPlan
    objects: ClassPlan
    fixed_warnings: list[str]
    # per window: its lock rows and their first-pass ids, its object rows and theirs
    # (kept when the windows are: pass 3 resolves them instead of classifying again)
    ids: ArraySpill | None = None

    def close(self) -> None:
        if self.ids is not None:
            self.ids.close()


def class_plans(s: Survey, namer: lock_classes.ClassNamer | None) -> Plans:
    """Pass 2: the class engines' first pass."""
    t = s.trace
    locks, objects = ClassEngine(t.symbols, namer), ClassEngine(t.symbols, namer)
    warned: set[str] = set()
    ids = ArraySpill() if s.spill is not None and s.spill.usable else None
    try:
        for w in s.windows("pass 2/4 (lock classes)"):
            warned.update(place_fixed_locks(w.events, t.symbols))
            lk = locks.feed(w.events, w.row0)
            orows = _object_rows_with_addr(w.events)
            ob = objects.feed(w.events, w.row0, orows)
            if ids is not None:
                at = np.flatnonzero(lk >= 0)
                ids.add([at, lk[at], orows, ob[orows]])
    except BaseException:
        if ids is not None:
            ids.close()
        raise
    if ids is not None:
        ids.close_writing()
    return Plans(locks.finish(), objects.finish(), sorted(warned), ids)


def _first_pass_ids(plans: Plans) -> Iterator[list[np.ndarray]] | None:
    return plans.ids.read() if plans.ids is not None and plans.ids.usable else None


def _window_classes(ev: pd.DataFrame, row0: int, plans: Plans,
                    engines: tuple[ClassEngine, ClassEngine],
                    kept: Iterator[list[np.ndarray]] | None) -> tuple[np.ndarray, np.ndarray]:
    """The window's final lock classes and object classes: the first pass's ids
    resolved with its plan where they were kept (``plan.resolve``, as classes.assign
    does), else the engines run again with the plan."""
    if kept is None:
        return (engines[0].feed(ev, row0).astype(np.int32),
                engines[1].feed(ev, row0, _object_rows_with_addr(ev)))
    at, prov, orows, oprov = next(kept)
    la = ev["lock_addr"].to_numpy()
    locks = np.full(len(ev), -1, dtype=np.int32)
    locks[at] = plans.locks.resolve(prov, la[at])
    objects = np.full(len(ev), -1, dtype=np.int64)
    objects[orows] = plans.objects.resolve(oprov, la[orows])
    return locks, objects


def _object_rows_with_addr(ev: pd.DataFrame) -> np.ndarray:
    rows = np.nonzero(ev["kind"].isin(waits.OBJECT_KINDS).to_numpy())[0]
    probe = waits.object_rows(ev, rows, 0, lambda at: (np.zeros(len(at), np.int64), []))
    return rows[probe.has_addr()]


def _count_forced(count: missing.ForcedCount, settled: pd.DataFrame, names: list[str]) -> None:
    f = settled[settled["forced"].astype(str) != ""]
    count.add(f["forced"].astype(str), f["cls"].to_numpy(), names)


@dataclass
class Replayed:
    """Pass 3's results."""

    replay: Replay
    wait_graph: waits.WaitGraph
    cases: list[row_store.AllocationCase]
    kept: pd.DataFrame  # the acquisitions sleeps hold (column ``acq``)
    gap_rows: np.ndarray


# long: the window loop, one step per consumer of the replay, read best in order
def replay_pass(s: Survey, plans: Plans, namer: lock_classes.ClassNamer | None
                ) -> tuple[pipeline.Gathered, Replayed]:
    t = s.trace
    info, syms = t.info, t.symbols
    table = plans.locks.table
    names = [c.name for c in table]
    unseen = missing.from_manifest(info)
    spin_pc = info.calibration.get("preempt_count_tracks_spinlocks")
    rp = Replayer(not info.kprobe_irqs_unknown, frozenset(info.untraced_pids),
                  spin_pc is not False, depth_counts_spin=spin_pc is True,
                  own_classes=frozenset(i for i, c in enumerate(table)
                                        if c.module not in ("vmlinux", "?", "")),
                  baseline=s.baseline)
    engines = (ClassEngine(syms, namer, plans.locks), ClassEngine(syms, namer, plans.objects))
    kept_ids = _first_pass_ids(plans)
    builder, holds = WaitBuilder(len(table)), HoldStream()
    allocs = (AllocationStream(syms) if rt_rules.judged(getattr(namer, "scope", None),
                                                         t.lock_types) else None)
    stats, forced = StatsAcc(table), missing.ForcedCount()
    mods = pipeline.module_names(t)
    hits = dict.fromkeys(mods, 0)
    held_open = OpenSites()
    sleeps = SleepFold(t.stacks, syms)
    irq_ended: dict[int, int] = {}  # acquisition -> the row it ended at
    referenced: set[int] = set()
    kept: list[pd.DataFrame] = []
    gaps: list[np.ndarray] = []
    carry = np.zeros(0, dtype=np.int64)  # suspect rows of calls still pending
    for w in s.windows("pass 3/4 (held locks, waits)"):
        ev, row0 = w.events, w.row0
        place_fixed_locks(ev, syms)
        classes, obj_cls = _window_classes(ev, row0, plans, engines, kept_ids)
        lock_rows = np.nonzero((ev["kind"] == "lock_acquire").to_numpy())[0]
        sus = missing.suspect_rows(ev, lock_rows, unseen, info, syms)
        suspects = _suspects(carry, sus, row0)
        held_open.add(ev, row0)
        holder = missing.holder_on_stack(ev, t.stacks, syms, row0, held_open.at)
        for a in range(0, len(ev), 1 << 16):
            rp.feed(ev.iloc[a:a + (1 << 16)], classes[a:a + (1 << 16)], row_offset=row0 + a,
                    suspect_rows=suspects, holder_on_stack=holder)
        new_sleeps, new_forced, new_ended = rp.since()
        rp.forget_sleeps()
        settled = rp.drain()
        still = rp.undrained()
        irq_ended.update(new_ended)
        stats.add(settled)
        _count_forced(forced, settled, names)
        cand = pd.concat([settled, still], ignore_index=True).sort_values("acq")
        for sl in sleeps.add(new_sleeps, ev, row0, _class_lookup(cand)):
            referenced.update(sl.held)
            referenced.update(sl.all_held)
        sleeps.window_end(int(ev["ts_ns"].to_numpy()[-1]) if len(ev) else 0)
        if referenced:
            kept.append(settled[settled["acq"].isin(list(referenced))])
        end = waits.ends_of(cand, ev["ts_ns"].to_numpy(),
                            {**{f.acq: f.row for f in new_forced}, **irq_ended}, row0)
        obj = np.nonzero(ev["kind"].isin(waits.OBJECT_KINDS).to_numpy())[0]
        gap = np.nonzero((ev["kind"] == "gap").to_numpy())[0] + row0
        gaps.append(gap)
        o = waits.object_rows(ev, obj, row0, _classes_of(obj_cls, plans.objects.table))
        builder.feed(o, holds.window(cand, end, set(o.tasks)), gap)
        holds.keep(cand, builder.open_span_starts())
        if allocs is not None:
            allocs.feed(ev, row0, cand, settled)
        for m, c in coverage(ev, syms, [], mods).items():
            hits[m] += c.lock_events
        held_open.keep(still["row"].to_numpy(dtype=np.int64))
        pending = np.unique(rp.pending_rows())
        carry = pending[suspects.contains(pending)]
        del ev, w, settled, cand
    rep = rp.finish()
    rep.sleeps = sleeps.finish()  # finish() has none the windows did not hand out
    last = rep.acquisitions  # the acquisitions never settled, as the trace left them
    stats.add(last)
    _count_forced(forced, last, names)
    cases = allocs.finish(last) if allocs is not None else []
    kept.append(last[last["acq"].isin(list(referenced))])
    owned = {m: ModuleCoverage(sum(c.module == m for c in table), hits[m]) for m in mods}
    gathered = pipeline.Gathered(
        table, builder.finish(), row_store.RowStore(schema.empty(), np.zeros(0, np.int64)),
        row_store.Renumbered(rep, {}, [], {}), stats.finish(rep.usage), stats.approximate(),
        forced.summary(unseen), rep.unmatched_releases, rep.irq_leaked, s.events, owned)
    acqs = pd.concat(kept, ignore_index=True).sort_values("acq").reset_index(drop=True)
    rep.acquisitions = acqs
    return gathered, Replayed(rep, gathered.waits, cases, acqs,
                              np.concatenate(gaps) if gaps else np.zeros(0, np.int64))


def _class_lookup(acqs: pd.DataFrame) -> Callable[[list[int]], list[int]]:
    """The lock classes of acquisitions (by index) among ``acqs`` (sorted by ``acq``;
    -1: not there)."""
    acq, cls = acqs["acq"].to_numpy(np.int64), acqs["cls"].to_numpy(np.int64)

    def classes(ids: list[int]) -> list[int]:
        want = np.asarray(ids, dtype=np.int64)
        at = np.minimum(np.searchsorted(acq, want), max(len(acq) - 1, 0))
        found = acq[at] == want if len(acq) else np.zeros(len(want), bool)
        return np.where(found, cls[at] if len(acq) else -1, -1).tolist()

    return classes


def _suspects(carry: np.ndarray, sus: AbstractSet[int], row0: int) -> RowSet:
    """The suspect rows of a window (``sus``, from its first row) and of the calls still
    pending from earlier windows (``carry``, sorted): one sorted array without sorting
    again, since every earlier row comes before the window's."""
    mine = (sus.rows if isinstance(sus, RowSet) else np.asarray(sorted(sus), np.int64)) + row0
    if not len(carry):
        return RowSet.of_sorted(mine)
    if not len(mine) or int(carry[-1]) < int(mine[0]):
        return RowSet.of_sorted(np.concatenate([carry, mine]))
    return RowSet.of_sorted(np.union1d(carry, mine))


def _classes_of(ids: np.ndarray, table: list[lock_classes.LockClass]
                ) -> Callable[[np.ndarray], tuple[np.ndarray, list[lock_classes.LockClass]]]:
    """``waits.object_rows``' classes from the object engine's ids for the window."""
    return lambda at: (ids[at], table)


def store_pass(s: Survey, rep: Replay, wg: waits.WaitGraph,
               cases: list[row_store.AllocationCase], gap_rows: np.ndarray
               ) -> row_store.RowStore:
    """Pass 4: the rows the rules read, as the whole frame has them (the task names
    the trace ends with, as ``decode_run`` gives them)."""
    want = row_store.named_rows(rep, wg.edges, gap_rows, cases)
    t = s.trace
    parts: list[pd.DataFrame] = []
    for w in s.windows("pass 4/4 (witness rows)", want):
        ev, row0 = w.events, w.row0
        lo, hi = np.searchsorted(want, [row0, row0 + len(ev)])
        if hi > lo:
            place_fixed_locks(ev, t.symbols)
            parts.append(ev.take(want[lo:hi] - row0).reset_index(drop=True))
    events = join_frames(parts) if parts else schema.empty()
    events["comm"] = comm_column(events, s.names)
    return row_store.RowStore(events, want)


def analyze_run(run_dir: Path, info: RunManifest, aids: Aids | None = None,
                how: How | None = None) -> tuple[Analysis, Trace]:
    """The analysis of a run directory a window at a time: the findings, edges and
    health ``pipeline.analyze`` gives over the whole frame; and the run as a Trace
    whose events are the store's (what the DWARF pass and the report read).
    ``aids``: the nesting judge and heap namer for the trace (cli's DWARF aids)."""
    t0 = time.monotonic()
    check_traced(run_dir, info)
    heap.reuse_windows()
    how = how or How()
    if how.total is None:
        how.total = info.lost.decoded_events
    s = survey(run_dir, info, how)
    try:
        nesting, namer = aids(s.trace) if aids is not None else (None, None)
        plans = class_plans(s, namer)
        s.trace.warnings += plans.fixed_warnings
        heap.give_back()
        try:
            g, r = replay_pass(s, plans, namer)
        finally:
            plans.close()
        heap.give_back()
        store = store_pass(s, r.replay, r.wait_graph, r.cases, r.gap_rows)
    finally:
        s.close()
    g.store = store
    g.kept = row_store.renumber(store, r.replay, r.wait_graph.edges, r.cases)
    s.trace.events = store.events
    return pipeline.conclude(s.trace, g, nesting, namer, t0), s.trace
