"""Decode a run's trace as a stream of windows in time order, in bounded memory.

One decode of every page at once (``tracer.ftrace_binary.decode`` over whole
buffers) holds the pages, their records and the frame at the same time: ~290
bytes an event, and a busy guest writes ~4.5 MB of pages a second.  :class:`StreamDecoder` reads
each CPU's pages a batch at a time (``cpuN.raw`` or ``.raw.gz``) and yields
the events frame a window at a time: the windows, put end to end, are the
frame ``decode_run`` gives, row for row and column for column (the stacks are
one growing list of distinct stacks; categorical columns have each window's own
categories).
What it keeps between windows is one batch of pages per CPU and the events not
yet in time order with the other CPUs'.

How the batches decode as the whole does (``ftrace_binary.Carry``):

* the page walk carries the last accepted page's time stamp and looks one page
  past its batch, so every page gets the verdict the whole walk gives it;
* a gap that a batch's last pages call for goes before the next batch's first
  record of that CPU; a stack record that opens a batch belongs to the record
  that closed the one before;
* the calibration is measured in the first batch of every CPU (the guest
  calibrates right after tracing starts) and applied to all of them;
* events leave in time order: an event goes out once no CPU can still
  produce an earlier one (each CPU's next page starts no earlier than its
  time stamp, and its last record read so far is held back for a stack record
  that may follow it).

Two things the whole frame knows and a window cannot: a task's name (``comm``)
is the one known when its window leaves (``saved_cmdlines`` and the context
switches seen so far), and on a lockdep kernel a probe row whose lockdep event
lies in the CPU's next batch keeps no lockdep name (tracer.lockdep_events).
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd
from pandas.api.types import union_categoricals

from tracedep.common import heap
from tracedep.common.run_manifest import RunManifest
from tracedep.errors import TraceFormatError
from tracedep.tracer import control, module_sections, page_sums, schema
from tracedep.tracer.event_rows import cmdline_names, sorted_unique, unique_names
from tracedep.tracer.ftrace_binary import (
    Carry,
    Cut,
    Decoded,
    decode,
    has_static_sites,
    place_static_locks,
    spin_preempt,
)
from tracedep.tracer.ftrace_formats import parse_header_page
from tracedep.tracer.lockdep_events import merge_lockdep
from tracedep.tracer.retention import GZ_SUFFIX, raw_files
from tracedep.tracer.ring_pages import CpuCursor
from tracedep.tracer.unseen_switches import UnseenSwitch
from tracedep.tracer.window import Window as Window  # where the stream's readers find it

# 8 MiB of pages per CPU and batch: on the 52 M-event benchmark trace the streamed analysis
# took 48 CPU s (343 MB) with 2048, 60 s (238 MB) with 1024 (pandas costs per window), and
# 50 s with 4096 (521 MB) or 8192 (858 MB)
BATCH_PAGES = 2048
_READ_MAX = 1 << 26


@dataclass(frozen=True)
class Prefix:
    """The part of a run still being written that can be read (tracer.live_prefix):
    each CPU's first ``limits[cpu]`` bytes (whole pages; a CPU not named: none), and
    the events up to ``until_ns``, by which every CPU's records are all there."""

    limits: dict[int, int]
    until_ns: int


class _CpuPages:
    """One CPU's raw pages, read a batch at a time, with the page after the batch."""

    def __init__(self, path: Path, psize: int, limit: int | None = None) -> None:
        self.path = path
        self.psize = psize
        self.left = limit  # bytes that may still be read (None: the whole file)
        self.f: IO[bytes] = (gzip.open(path, "rb") if path.name.endswith(GZ_SUFFIX)  # type: ignore[assignment]
                             else path.open("rb"))
        self.page = 0  # index of the batch's first page in the file
        self.cursor = CpuCursor()
        self.ahead = self._read(psize)
        self.sums = page_sums.recorded(path.with_name(path.name.removesuffix(GZ_SUFFIX)))

    def _read(self, n: int) -> bytes:
        """Up to ``n`` bytes (read in pieces: ``n`` may be far more than the file has)."""
        if self.left is not None:
            n = min(n, self.left)
        out = bytearray()
        try:
            while len(out) < n and (piece := self.f.read(min(n - len(out), _READ_MAX))):
                out += piece
        except (OSError, EOFError, zlib.error):
            pass  # a damaged .gz: what was read is kept, the rest counts as lost
        if self.left is not None:
            self.left -= len(out)
        return bytes(out)

    @property
    def done(self) -> bool:
        return not self.ahead

    def next_ts(self) -> int | None:
        """The time stamp the next page starts at: no later record can be earlier
        (a page whose time stamp is out of order is dropped by the walk)."""
        return int.from_bytes(self.ahead[:8], "little") if len(self.ahead) >= 8 else None

    def batch(self, pages: int) -> tuple[bytes, np.ndarray | None]:
        """The next ``pages`` pages (fewer at the end, and a torn last page), and which
        of them differ from the run's page sums (None: no sums recorded)."""
        data = self.ahead + self._read(pages * self.psize - len(self.ahead))
        self.ahead = self._read(self.psize)
        if len(data) % self.psize and self.ahead:
            # a short read inside the file: keep whole pages, the rest starts the next
            cut = len(data) - len(data) % self.psize
            data, self.ahead = data[:cut], data[cut:] + self.ahead
        self.cursor.lookahead = self.ahead if len(self.ahead) == self.psize else b""
        n = len(data) // self.psize
        bad = None
        if self.sums is not None:
            have = page_sums.page_sums(data, self.psize)
            want = self.sums[self.page:self.page + n]
            bad = np.ones(len(have), dtype=bool)
            bad[:len(want)] = have[:len(want)] != want
        self.page += n
        return data, bad

    def close(self) -> None:
        self.f.close()


@dataclass
class _Totals:
    """What the windows add up to: :class:`Decoded` without its events."""

    counts: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)
    records_per_cpu: dict[int, int] = field(default_factory=dict)
    lockdep: dict[str, int] = field(default_factory=dict)
    torn: int = 0
    missed: int = 0
    backwards: int = 0
    damaged: int = 0
    total: int = 0
    spin_votes: tuple[int, int] = (0, 0)
    cal_counts: dict[str, int] = field(default_factory=dict)
    section_rows: list[Any] = field(default_factory=list)
    comms_by_cpu: dict[int, dict[int, str]] = field(default_factory=dict)
    rows: int = 0  # rows out so far, gaps too
    samples: dict[str, int] = field(default_factory=dict)  # calibration records per kind
    unseen_switches: int = 0
    unseen_switch_first: UnseenSwitch | None = None

    def add(self, d: Decoded) -> None:
        for k, v in d.counts.items():
            self.counts[k] = self.counts.get(k, 0) + v
        for k, v in d.rejected.items():
            self.rejected[k] = self.rejected.get(k, 0) + v
        for c, v in d.records_per_cpu.items():
            self.records_per_cpu[c] = self.records_per_cpu.get(c, 0) + v
        self.torn += d.torn_pages
        self.missed += d.missed_events
        self.backwards += d.backwards_pages
        self.damaged += d.damaged_pages
        self.section_rows += d.section_rows
        self.unseen_switches += d.unseen_switches
        self.unseen_switch_first = self.unseen_switch_first or d.unseen_switch_first
        votes = d.calibration.get("_spin_votes")
        if isinstance(votes, tuple):
            self.spin_votes = (self.spin_votes[0] + votes[0], self.spin_votes[1] + votes[1])
        for kind, m in d.calibration.items():
            n = m.get("samples") if not kind.startswith("_") and isinstance(m, dict) else None
            if isinstance(n, int):
                self.samples[kind] = self.samples.get(kind, 0) + n
        for k in ("_regime_mismatch", "_uncalibrated_rows", "_irqs_unreliable_rows"):
            n = d.calibration.get(k, 0)
            self.cal_counts[k] = self.cal_counts.get(k, 0) + (n if isinstance(n, int) else 0)


def decode_run(run_dir: Path, info: RunManifest | None = None,
               max_rows: int | None = None,
               windows: Callable[[Window], None] | None = None) -> Decoded:
    """Decode a run directory written by ``tracer.session``: its pages a batch at a
    time, put together into the whole events frame (:meth:`StreamDecoder.whole`);
    ``max_rows``: keep no more events than that (common.memory_budget); ``windows``:
    every window besides, as a stream reads them."""
    return StreamDecoder(run_dir, info).whole(max_rows, windows)


class StreamDecoder:
    """A run directory's events, a window at a time (:meth:`windows`); then
    :meth:`decoded` says what ``decode_run`` would have, without the events."""

    def __init__(self, run_dir: Path, info: RunManifest | None = None,
                 batch_pages: int = BATCH_PAGES, prefix: Prefix | None = None) -> None:
        ctl = control.load(run_dir / "control.log")
        hp = ctl.header_page()
        if not hp:
            raise TraceFormatError(f"{run_dir}: the guest sent no ring-buffer header "
                                   "(it died before tracing was armed)")
        if info is None:
            from tracedep.common import run_manifest as manifest

            info = manifest.read(run_dir)
        self.header_page: str = hp
        self.info = info
        try:
            self.psize = parse_header_page(self.header_page).page_size
        except ValueError as e:
            raise TraceFormatError(f"{run_dir / 'control.log'}: {e}") from None
        self.formats = ctl.formats()
        self.cmdlines = ctl.file("/sys/kernel/tracing/saved_cmdlines") or ""
        self.sites: dict[str, dict[str, Any]] = dict(info.inline_sites)
        self.batch_pages = max(int(batch_pages), 1)
        self.prefix = prefix
        self.run_dir = run_dir
        self.stacks: list[tuple[int, ...]] = []  # each distinct stack once
        self._stack_ids: dict[tuple[int, ...], int] = {}
        self.totals = _Totals()
        self.calibration: dict[str, Any] = {}
        self.missing_pages = 0
        self._carry = Carry()
        self._load_ts: dict[str, list[int]] = {}
        self._last: dict[int, tuple[int, bool]] = {}  # per CPU: (time, kept) of its last record
        self._known: dict[int, str] = {}  # task names from the context switches read so far

    # -- the stream -------------------------------------------------------------------

    def windows(self) -> Iterator[Window]:
        """The events, a window at a time, each finished as it leaves: static locks
        placed, lockdep names merged, task names as known so far (module docstring)."""
        for ev, row0 in self._raw():
            yield self._finished(ev, row0)

    def _finished(self, ev: pd.DataFrame, row0: int) -> Window:
        """A window as it leaves: static locks placed, lockdep names merged, task names
        as known so far (module docstring)."""
        if has_static_sites(self.sites):
            loads = module_sections.assemble(self.totals.section_rows)
            place_static_locks(ev, loads, self.sites, self.info, self._load_ts)
        if self.totals.counts.get("lock/lock_acquire"):
            for k, v in merge_lockdep(ev).items():
                self.totals.lockdep[k] = self.totals.lockdep.get(k, 0) + v
        ev["comm"] = comm_column(ev, {**cmdline_names(self.cmdlines), **self._known})
        return Window(ev, row0)

    def whole(self, max_rows: int | None = None,
              windows: Callable[[Window], None] | None = None) -> Decoded:
        """:meth:`decoded` with the whole events frame, as ``decode_run`` gives it: the
        windows' columns put together one column at a time (the peak is about one
        frame, not the pages and their records besides), then finished on the whole.

        ``max_rows``: the frame keeps the first that many rows (time order); the rest
        is still decoded, for the counts, losses and names of the whole trace, and
        ``Decoded.cut`` says what was left out.  ``windows``: also given every window
        as :meth:`windows` makes it (the same decode, for a stream to read later)."""
        parts: dict[str, list[Any]] = {c: [] for c in schema.COLUMNS}
        kept, cut = 0, None
        for raw, row0 in self._raw():
            ev = raw
            if max_rows is not None and kept + len(ev) > max_rows:
                room = max(max_rows - kept, 0)
                cut = _tally(cut, ev.iloc[room:], kept + room)
                ev = ev.iloc[:room]
            kept += len(ev)
            if len(ev):
                for c in parts:
                    # a copy of its own: a view would keep the window's 2-D block alive
                    col = ev[c]
                    parts[c].append(None if c == "comm" else col.array.copy()
                                    if isinstance(col.dtype, pd.CategoricalDtype)
                                    else col.to_numpy().copy())
                del col
            del ev
            if windows is not None:
                windows(self._finished(raw, row0))
            del raw
        # the windows' small arrays came from the C heap, and their holes stay resident
        # beside the frame's large (mapped) columns unless handed back (common.heap)
        heap.give_back()
        cols: dict[str, Any] = {}
        for c, dtype in schema.COLUMNS.items():
            got, parts[c] = parts[c], []
            if c == "comm":
                cols[c] = None  # its place; filled once pid and kind are whole
            elif not got:
                cols[c] = schema.empty()[c].array
            elif isinstance(got[0], pd.Categorical):
                cols[c] = union_categoricals([_obj(x) for x in got], ignore_order=True)
            else:
                cols[c] = np.concatenate([np.asarray(x) for x in got]).astype(dtype, copy=False)
            del got
            heap.give_back()
        cols["comm"] = comm_column(pd.DataFrame({"pid": cols["pid"], "kind": cols["kind"]},
                                                 copy=False), self._final_names())
        # as they are: pandas would copy each column set on a frame one at a time
        ev = pd.DataFrame(cols, index=pd.RangeIndex(kept), copy=False)
        d = self.decoded()
        d.events = ev
        d.cut = cut
        if has_static_sites(self.sites):
            place_static_locks(ev, d.module_loads, self.sites, self.info, {})
        if d.counts.get("lock/lock_acquire"):
            d.lockdep = merge_lockdep(ev)
        return d

    def _raw(self) -> Iterator[tuple[pd.DataFrame, int]]:
        """The windows as they leave the merge: (events, first row)."""
        pre = self.prefix
        cpus = {cpu: _CpuPages(p, self.psize, None if pre is None else pre.limits.get(cpu, 0))
                for cpu, p in raw_files(self.run_dir / "trace").items()}
        held: pd.DataFrame | None = None  # events not yet in time order with every CPU's
        try:
            # every CPU's first batch at once: the calibration is among them
            todo = sorted(c for c, p in cpus.items() if not p.done)
            while todo:
                batch = self._decode(cpus, todo, held)
                held = batch if held is None else _merge(held, batch)
                out, held = _split(held, self._watermark(cpus))
                out = self._until(out)
                if len(out):
                    yield self._count(out)
                left = [c for c, p in cpus.items() if not p.done]
                todo = [min(left, key=lambda c: (cpus[c].next_ts() or 0, c))] if left else []
            if held is not None and len(held := self._until(held)):
                yield self._count(held)
        finally:
            for c in cpus.values():
                c.close()
        self._finish(cpus)

    def _until(self, ev: pd.DataFrame) -> pd.DataFrame:
        """A prefix's events: none after the time every CPU has reached."""
        if self.prefix is None or not len(ev):
            return ev
        keep = ev["ts_ns"].to_numpy() <= self.prefix.until_ns
        return ev if keep.all() else ev[keep]

    def _count(self, ev: pd.DataFrame) -> tuple[pd.DataFrame, int]:
        row0 = self.totals.rows
        self.totals.rows += len(ev)
        self.totals.total += int((ev["kind"] != "gap").sum())
        return ev.reset_index(drop=True), row0

    def _decode(self, cpus: dict[int, _CpuPages], todo: list[int],
                held: pd.DataFrame | None) -> pd.DataFrame:
        buffers, damaged = {}, {}
        carry = self._carry
        for cpu in todo:
            data, bad = cpus[cpu].batch(self.batch_pages)
            buffers[cpu] = data
            if bad is not None:
                damaged[cpu] = bad
            carry.cursors[cpu] = cpus[cpu].cursor
        carry.stack_base = 0  # this batch's own ids: _intern_stacks maps them
        carry.calibration = self.calibration or None
        d = decode(buffers, self.header_page, self.formats, self.info.call_insn_size,
                   self.info.machine_kprobe_irqs_masked, self.cmdlines,
                   inline_sites=self.sites, damaged=damaged, carry=carry)
        if not self.calibration:
            self.calibration = {k: v for k, v in d.calibration.items()
                                if not k.startswith("_")}
        self.totals.add(d)
        ids = self._intern_stacks(d.stacks)
        if len(ids):
            local = d.events["stack_id"].to_numpy()
            d.events["stack_id"] = np.where(local >= 0, ids[np.maximum(local, 0)],
                                            local).astype(np.int32)
        for cpu, lead in carry.leading_stack.items():
            last = self._last.get(cpu)
            if held is not None and last is not None and last[1]:
                _give_stack(held, cpu, last[0], int(ids[lead]))
        self._last.update(carry.last_record)
        for cpu, names in carry.comms_by_cpu.items():
            self.totals.comms_by_cpu.setdefault(cpu, {}).update(names)
            self._known.update(names)
        return d.events

    def _intern_stacks(self, stacks: list[tuple[int, ...]]) -> np.ndarray:
        """The ids of a batch's stacks in the one table of the trace, where each distinct
        stack is once: a busy guest records the same few hundred stacks hundreds of
        thousands of times (367,815 records, 571 stacks, on the bundled drivers on arm64)."""
        ids = np.empty(len(stacks), dtype=np.int32)
        for i, st in enumerate(stacks):
            got = self._stack_ids.get(st)
            if got is None:
                got = self._stack_ids[st] = len(self.stacks)
                self.stacks.append(st)
            ids[i] = got
        return ids

    def _watermark(self, cpus: dict[int, _CpuPages]) -> int:
        """No event earlier than this can still come: each CPU with pages left starts
        its next page no earlier, and its last record read so far waits there for a
        stack record that may open the CPU's next batch."""
        marks = []
        for cpu, p in cpus.items():
            if p.done:
                continue
            t = p.next_ts()
            last = self._last.get(cpu)
            if last is not None:
                t = last[0] if t is None else min(t, last[0])
            marks.append(t if t is not None else -(1 << 62))
        return min(marks) if marks else 1 << 62

    def _final_names(self) -> dict[int, str]:
        """The task names the whole trace ends with, as one decode of every page
        gives them: saved_cmdlines, then each CPU's context switches, CPU after CPU."""
        names = cmdline_names(self.cmdlines)
        for cpu in sorted(self.totals.comms_by_cpu):
            names.update(self.totals.comms_by_cpu[cpu])
        return names

    def _finish(self, cpus: dict[int, _CpuPages]) -> None:
        """Pages the run recorded (its page sums) that the files no longer have."""
        for side in sorted((self.run_dir / "trace").glob(f"cpu*{page_sums.SUFFIX}")):
            cpu = int(side.stem[3:]) if side.stem[3:].isdigit() else None
            had = page_sums.recorded_pages(side.with_suffix(".raw")) or 0
            now = cpus[cpu].page if cpu in cpus else 0
            self.missing_pages += max(had - now, 0)

    def decoded(self) -> Decoded:
        """What ``decode_run`` says of the trace, but its events (empty): for after
        :meth:`windows` has run to its end."""
        t = self.totals
        measured = {k: {**v, "samples": t.samples.get(k, 0)} for k, v in self.calibration.items()}
        cal: dict[str, Any] = {**measured, **t.cal_counts,
                               "_spin_votes": t.spin_votes,
                               "_spin_preempt": spin_preempt(*t.spin_votes)}
        return Decoded(schema.empty(), self.stacks, t.counts, t.torn, t.missed, t.total,
                       self._final_names(), cal, lockdep=t.lockdep, backwards_pages=t.backwards,
                       rejected=t.rejected, damaged_pages=t.damaged,
                       missing_pages=self.missing_pages,
                       module_loads=module_sections.assemble(t.section_rows),
                       records_per_cpu=t.records_per_cpu, section_rows=t.section_rows,
                       unseen_switches=t.unseen_switches,
                       unseen_switch_first=t.unseen_switch_first)


def _tally(cut: Cut | None, left: pd.DataFrame, kept: int) -> Cut:
    """``cut`` with the rows of ``left`` counted as left out."""
    ts = left["ts_ns"].to_numpy()
    cut = cut or Cut(kept, 0, {}, int(ts[0]), int(ts[0]))
    cut.dropped += len(left)
    cut.end_ns = max(cut.end_ns, int(ts.max()))
    cpus, n = np.unique(left["cpu"].to_numpy(), return_counts=True)
    for c, m in zip(cpus.tolist(), n.tolist(), strict=True):
        cut.dropped_per_cpu[c] = cut.dropped_per_cpu.get(c, 0) + m
    return cut


def comm_column(ev: pd.DataFrame, names: dict[int, str]) -> pd.Categorical:
    """Each row's task name from ``names`` (pid 0: ``<idle>``; gap rows: none)."""
    names = {**names, 0: "<idle>"}
    upids, inv = sorted_unique(ev["pid"].to_numpy())
    idx = np.where((ev["kind"] == "gap").to_numpy(), len(upids), inv.reshape(-1))
    return unique_names([names.get(int(p), "<...>") for p in upids] + [""], idx)


def _give_stack(held: pd.DataFrame, cpu: int, ts: int, sid: int) -> None:
    """Set the stack of ``cpu``'s record at ``ts`` (its latest such row, not a gap)."""
    rows = np.nonzero((held["cpu"].to_numpy() == cpu) & (held["ts_ns"].to_numpy() == ts)
                      & (held["kind"] != "gap").to_numpy())[0]
    if len(rows):
        col = held["stack_id"].to_numpy().copy()
        col[rows[-1]] = sid
        held["stack_id"] = col


def _merge(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """``a`` then ``b``, in the whole frame's order: time, then CPU, then records
    before gaps, then the order they came in (a CPU's pages are read in order)."""
    if not len(b):
        return a
    if not len(a):
        return b
    gap = np.concatenate([(a["kind"] == "gap").to_numpy(), (b["kind"] == "gap").to_numpy()])
    order = np.lexsort((gap, np.concatenate([a["cpu"].to_numpy(), b["cpu"].to_numpy()]),
                        np.concatenate([a["ts_ns"].to_numpy(), b["ts_ns"].to_numpy()])))
    # each column taken into place once (a frame's take would copy it again), and a
    # categorical's codes recoded into the union of the two category lists (what
    # union_categoricals gives, without its per-value work)
    cols: dict[str, Any] = {}
    for name in a.columns:
        x, y = a[name].array, b[name].array
        if isinstance(x, pd.Categorical) and isinstance(y, pd.Categorical):
            cats, codes = _union_codes(x, y)
            cols[name] = pd.Categorical.from_codes(codes[order], categories=cats)
        else:
            cols[name] = np.concatenate([np.asarray(x), np.asarray(y)])[order]
    return pd.DataFrame(cols, index=pd.RangeIndex(len(order)), copy=False)


def _union_codes(x: pd.Categorical, y: pd.Categorical) -> tuple[pd.Index, np.ndarray]:
    """The categories of ``x`` then those only ``y`` has (object dtype), and the
    codes of ``x`` then ``y`` in them."""
    cx = x.categories.astype(object)
    at = cx.get_indexer(y.categories.astype(object))
    new = at < 0
    cats = cx.append(y.categories[new].astype(object)) if new.any() else cx
    at[new] = len(cx) + np.arange(int(new.sum()))
    yc = y.codes.astype(np.int64)
    y_codes = np.where(yc < 0, -1, at[np.maximum(yc, 0)]) if len(at) else yc
    return pd.Index(cats, dtype=object), np.concatenate([x.codes.astype(np.int64), y_codes])


def _obj(c: pd.Series | pd.Categorical) -> pd.Series | pd.Categorical:
    """``c`` with object categories (union_categoricals wants one dtype for them)."""
    cat = c if isinstance(c, pd.Categorical) else c.cat
    cats = cat.categories
    return c if cats.dtype == object else cat.set_categories(cats.astype(object))


def _split(df: pd.DataFrame, before: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    k = int(np.searchsorted(df["ts_ns"].to_numpy(), before, side="left"))
    return df.iloc[:k], df.iloc[k:].reset_index(drop=True)
