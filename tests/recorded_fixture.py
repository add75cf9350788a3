"""Recorded-trace fixtures: the small slice of a real run that the analysis of some modules needs.

``save_fixture(run_dir, modules, out_dir)`` keeps, from a real run directory:

* every lock, sleep, reclaiming-allocation and ``sched_switch`` event of each
  task (or idle CPU) while it runs the modules' code: one window per burst of
  the modules' activity on that task (module code in the call site or in the
  witness stack, or a lock that lives in the modules' data or heap objects);
* the acquisitions still held when a window opens, and the release (and
  trylock outcome) of every kept acquisition, found with a replay of the whole
  run, so no lock is left held by the slice that the run released;
* the hardirq/softirq lock events, on any task, of the locks those windows use;
* the allocations (and frees) of the objects that hold the kept locks, so heap
  locks get the same classes;
* the ``module_load``/``module_free`` events.

It writes, into ``out_dir``::

    events.csv.gz   the kept events, tracer.schema columns
    stacks.json     the witness stacks they refer to (``stack_id`` indexes this list)
    kallsyms        /proc/kallsyms format: every symbol an address of the slice falls in,
                    and the next one (which bounds its size); module symbols carry
                    ``\\t[module]`` and come from the module's .ko placed as the run loaded it
    manifest.json   the run's manifest without its bulk, plus a ``fixture`` key: where
                    each module load lay (section spans, trace times) and the kernel span,
                    the modules' DWARF answers at the slice's module addresses (``source``)
                    and the C type DWARF gives each spinlock acquisition (``lock_ctypes``)

``load_fixture(out_dir)`` reads it back as an :class:`analysis.trace.Trace`
whose ``analyze()`` gives what the whole run gave for those modules.
"""

from __future__ import annotations

import gzip
import json
import logging
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tracedep.analysis import classes as lock_classes
from tracedep.analysis.heldlocks import replay
from tracedep.analysis.lock_ctypes import LockTypes
from tracedep.analysis.replay_inputs import GFP_DIRECT_RECLAIM
from tracedep.analysis.run_symbols import ModuleSpan, RunSymbols
from tracedep.analysis.trace import Trace, load
from tracedep.analysis.waits import OBJECT_KINDS
from tracedep.common import run_manifest as manifest
from tracedep.errors import InputError
from tracedep.kimage.elf_symbols import SymbolTable
from tracedep.kimage.kallsyms import parse as read_kallsyms
from tracedep.tracer import schema
from tracedep.tracer.probes import LOCK_FUNCS

log = logging.getLogger(__name__)

FIXTURE_VERSION = 1
# Two events of a task's module activity further apart than this start a new window.
DEFAULT_GAP_NS = 5_000_000
LOCK_KINDS = ("lock_acquire", "lock_return", "lock_release")
_MANIFEST_KEYS = ("manifest_version", "state", "tracedep_version", "started", "arch",
                  "transport", "call_insn_size", "kprobe_irqs_unknown", "untraced_pids",
                  "ending", "kaslr", "guest", "workload", "bundled_drivers", "calibration",
                  "machine_kprobe_irqs_masked", "lock_classes")


@dataclass
class _Run:
    """A run directory decoded and replayed once (saving many fixtures reuses it)."""

    trace: Trace
    key: np.ndarray  # task key per row: pid, or -1 - cpu for the idle task
    acqs: pd.DataFrame  # heldlocks acquisitions of the whole run
    acq_by_row: dict[int, int]  # acquire row -> index into acqs
    rows_by_key: dict[int, np.ndarray]  # event rows of each task key, in time order
    acqs_by_task: dict[int, dict[str, np.ndarray]]  # acqs columns of each task key


_RUNS: dict[Path, _Run] = {}


def _prepare(run_dir: Path) -> _Run:
    run_dir = run_dir.resolve()
    if run_dir in _RUNS:
        return _RUNS[run_dir]
    trace = load(run_dir)
    ev = trace.events
    classes, _table = row_classes(trace)
    untraced = frozenset(trace.info.untraced_pids)
    spin_pc = trace.info.calibration.get("preempt_count_tracks_spinlocks")
    rep = replay(ev, classes, not trace.info.kprobe_irqs_unknown, untraced,
                 spin_pc is not False)
    pid = ev["pid"].to_numpy().astype(np.int64)
    key = np.where(pid > 0, pid, -1 - ev["cpu"].to_numpy().astype(np.int64))
    order = np.argsort(key, kind="stable")
    uniq, starts = np.unique(key[order], return_index=True)
    parts = np.split(order, starts[1:])
    acqs = rep.acquisitions.reset_index(drop=True)
    by_task: dict[int, dict[str, np.ndarray]] = {}
    if len(acqs):
        a_order = np.argsort(acqs["task"].to_numpy(), kind="stable")
        a_keys, a_starts = np.unique(acqs["task"].to_numpy()[a_order], return_index=True)
        cols = {c: acqs[c].to_numpy()[a_order] for c in (
            "row", "ctx", "ts_acquire", "ts_release", "handed_off")}
        bounds = [*a_starts.tolist(), len(a_order)]
        for i, k in enumerate(a_keys.tolist()):
            by_task[int(k)] = {c: v[bounds[i]:bounds[i + 1]] for c, v in cols.items()}
    run = _Run(trace, key, acqs, {int(r): i for i, r in enumerate(acqs["row"].tolist())},
               {int(k): p for k, p in zip(uniq.tolist(), parts, strict=True)}, by_task)
    _RUNS.clear()  # one run at a time: a whole run's frames are big
    _RUNS[run_dir] = run
    return run


def _module_rows(run: _Run, names: set[str]) -> np.ndarray:
    """Rows whose call site, witness stack or lock belongs to the modules ``names``."""
    ev = run.trace.events
    syms = run.trace.symbols
    n = len(ev)
    ip = ev["ip"].to_numpy()
    ts = ev["ts_ns"].to_numpy()
    addr = ev["lock_addr"].to_numpy()
    kinds = ev["kind"].to_numpy()
    is_lock = np.isin(kinds, LOCK_KINDS)
    spans = [m for m in syms.modules if m.name in names]
    hit = np.zeros(n, dtype=bool)
    for col, mask in ((ip, np.ones(n, dtype=bool)), (addr, is_lock)):
        cand = np.zeros(n, dtype=bool)
        for m in spans:
            cand |= (mask & (ts >= m.t0) & (ts < m.t1) & (col >= np.uint64(m.lo))
                     & (col < np.uint64(m.hi)))
        # one address may belong to several loads (init sections are reused): ask
        # the run's symbols which one it was at that time
        for r in np.nonzero(cand)[0].tolist():
            hit[r] |= syms.module_of(int(col[r]), int(ts[r])) in names
    # witness stacks through the modules' code
    sid = ev["stack_id"].to_numpy()
    with_stack = np.nonzero(sid >= 0)[0]
    for r in with_stack.tolist():
        if not hit[r]:
            t = int(ts[r])
            hit[r] = any(syms.module_of(a, t) in names for a in run.trace.stacks[int(sid[r])])
    # locks inside objects the modules allocated, while those objects live
    objs = np.nonzero(hit & (kinds == "alloc") & (ev["ptr"].to_numpy() != 0))[0]
    frees = _frees_by_ptr(ev)
    ptrs = ev["ptr"].to_numpy()
    nbytes = ev["bytes"].to_numpy()
    for r in objs.tolist():
        lo, hi, t0 = int(ptrs[r]), int(ptrs[r]) + int(nbytes[r]), int(ts[r])
        t1 = next((t for t in frees.get(lo, []) if t > t0), 1 << 62)
        hit |= (is_lock & (addr >= np.uint64(lo)) & (addr < np.uint64(hi)) & (ts >= t0)
                & (ts < t1))
    return np.nonzero(hit)[0]


def _frees_by_ptr(ev: pd.DataFrame) -> dict[int, list[int]]:
    fr = np.nonzero(ev["kind"].to_numpy() == "free")[0]
    out: dict[int, list[int]] = {}
    for p, t in zip(ev["ptr"].to_numpy()[fr].tolist(), ev["ts_ns"].to_numpy()[fr].tolist(),
                    strict=True):
        out.setdefault(int(p), []).append(int(t))
    return out


def _windows(run: _Run, rows: np.ndarray, gap_ns: int) -> list[tuple[int, int, int]]:
    """(task key, first ts, last ts) of each burst of activity in ``rows``."""
    ts = run.trace.events["ts_ns"].to_numpy()[rows]
    keys = run.key[rows]
    order = np.lexsort((ts, keys))
    ts, keys = ts[order], keys[order]
    out: list[tuple[int, int, int]] = []
    start = 0
    for i in range(1, len(ts) + 1):
        if i == len(ts) or keys[i] != keys[start] or ts[i] - ts[i - 1] > gap_ns:
            out.append((int(keys[start]), int(ts[start]), int(ts[i - 1])))
            start = i
    return out


def _needed(ev: pd.DataFrame) -> np.ndarray:
    """Events the rules read: locks, may-sleep events, context switches, waits and
    their other sides (analysis.waits)."""
    kinds = ev["kind"].to_numpy()
    return (np.isin(kinds, (*LOCK_KINDS, "sleep_call", "sched_switch", *OBJECT_KINDS))
            | ((kinds == "alloc") & ((ev["gfp"].to_numpy() & GFP_DIRECT_RECLAIM) != 0)))


def _outcome_row(run: _Run, r: int) -> int | None:
    """The ``lock_return`` that tells whether the conditional acquire at row ``r`` succeeded."""
    ev = run.trace.events
    fn = str(ev["event"].iat[r]).partition("_")[2]
    lf = LOCK_FUNCS.get(fn)
    if lf is None or lf.release:
        return None
    want = f"tracedep/lr_{fn}"
    rows = run.rows_by_key[int(run.key[r])]
    i = int(np.searchsorted(rows, r, side="right"))
    ev_col = ev["event"].to_numpy()
    for j in rows[i:i + 4096].tolist():
        if ev_col[j] == want:
            return int(j)
        if ev_col[j] == f"tracedep/lk_{fn}":
            return None  # a new call of the same function before any return
    return None


def _close(run: _Run, keep: set[int]) -> None:
    """Add the release and the outcome of every kept acquire, in place."""
    acqs = run.acqs
    rel = acqs["release_row"].to_numpy()
    kinds = run.trace.events["kind"].to_numpy()
    for r in [r for r in keep if kinds[r] == "lock_acquire"]:
        a = run.acq_by_row.get(r)
        if a is not None and rel[a] >= 0:
            keep.add(int(rel[a]))
        o = _outcome_row(run, r)
        if o is not None:
            keep.add(o)


def _held_at(run: _Run, task: int, t: int, ctx: str | None = None) -> list[int]:
    """Acquire rows of the locks ``task`` held (in ``ctx``, or any) at time ``t``."""
    a = run.acqs_by_task.get(task)
    if a is None:
        return []
    rel = a["ts_release"]
    m = (a["ts_acquire"] < t) & ((rel >= t) | (rel < 0)) & ~a["handed_off"].astype(bool)
    if ctx is not None:
        m &= a["ctx"] == ctx
    return [int(r) for r in a["row"][m].tolist()]


def _alloc_rows(run: _Run, keep: set[int]) -> set[int]:
    """Allocations (and frees) that give the kept heap locks their classes."""
    ev = run.trace.events
    syms = run.trace.symbols
    kinds = ev["kind"].to_numpy()
    ts = ev["ts_ns"].to_numpy()
    addr = ev["lock_addr"].to_numpy()
    uses: dict[int, list[int]] = {}
    for r in keep:
        if kinds[r] in LOCK_KINDS and addr[r]:
            uses.setdefault(int(addr[r]), []).append(int(ts[r]))
    allocs = np.nonzero((kinds == "alloc") & (ev["ptr"].to_numpy() != 0)
                        & (ev["bytes"].to_numpy() > 0))[0]
    a_ptr = ev["ptr"].to_numpy()[allocs]
    order = np.argsort(a_ptr, kind="stable")
    a_ptr, a_rows = a_ptr[order], allocs[order]
    a_end = a_ptr + ev["bytes"].to_numpy()[a_rows].astype(np.uint64)
    a_ts = ts[a_rows]
    max_obj = int(ev["bytes"].to_numpy()[a_rows].max()) if len(a_rows) else 0
    frees = np.nonzero(kinds == "free")[0]
    free_rows: dict[int, list[int]] = {}
    for r, p in zip(frees.tolist(), ev["ptr"].to_numpy()[frees].tolist(), strict=True):
        free_rows.setdefault(int(p), []).append(int(r))
    out: set[int] = set()
    for a, times in uses.items():
        if syms.lookup(a, times[0]) is not None:
            continue  # a static lock: named by its symbol
        lo = int(np.searchsorted(a_ptr, np.uint64(max(a - max_obj, 0)), side="left"))
        hi = int(np.searchsorted(a_ptr, np.uint64(a), side="right"))
        cand = sorted((j for j in range(lo, hi) if int(a_end[j]) > a), key=lambda j: int(a_ts[j]))
        cand_ts = [int(a_ts[j]) for j in cand]
        last = max(times)
        for t in sorted(set(times)):
            k = bisect_right(cand_ts, t) - 1
            if k < 0:
                continue
            j = cand[k]
            fr_rows = free_rows.get(int(a_ptr[j]), [])
            if any(cand_ts[k] < int(ts[fr]) < t for fr in fr_rows):
                continue  # freed before this use: no class from it, whether kept or not
            out.add(int(a_rows[j]))
            # its frees up to the last use, so an older object is never taken for it
            out.update(fr for fr in fr_rows if cand_ts[k] < int(ts[fr]) <= last)
    return out


def select_rows(run_dir: Path, module_names: list[str], gap_ns: int = DEFAULT_GAP_NS
                ) -> tuple[Trace, np.ndarray]:
    """The run's trace and the rows a fixture of ``module_names`` keeps (sorted)."""
    run = _prepare(run_dir)
    ev = run.trace.events
    names = set(module_names)
    known = {m.name for m in run.trace.info.modules}
    missing = names - known
    if missing:
        raise InputError(f"{run_dir}: no module {', '.join(sorted(missing))} in this run")
    mrows = _module_rows(run, names)
    needed = _needed(ev)
    ts = ev["ts_ns"].to_numpy()
    keep: set[int] = set()
    wins = _windows(run, mrows, gap_ns)
    for task, t0, t1 in wins:
        rows = run.rows_by_key[task]
        lo = int(np.searchsorted(ts[rows], t0, side="left"))
        hi = int(np.searchsorted(ts[rows], t1, side="right"))
        sel = rows[lo:hi]
        keep.update(sel[needed[sel]].tolist())
        keep.update(_held_at(run, task, t0))
    keep.update(int(r) for r in mrows.tolist() if needed[r] or ev["kind"].iat[r] == "alloc")
    _close(run, keep)
    # IRQ-context events of the same locks while the modules were active
    if wins:
        lo_t, hi_t = min(w[1] for w in wins), max(w[2] for w in wins)
        kinds = ev["kind"].to_numpy()
        addr = ev["lock_addr"].to_numpy()
        # the locks the modules' own code takes
        addrs = np.array(sorted({int(addr[r]) for r in mrows.tolist() if kinds[r] in LOCK_KINDS}),
                         dtype=np.uint64)
        irq = (ev["in_hardirq"].to_numpy() | ev["in_softirq"].to_numpy())
        cand = np.nonzero(irq & np.isin(kinds, LOCK_KINDS) & (ts >= lo_t) & (ts <= hi_t)
                          & np.isin(addr, addrs))[0]
        extra = set(cand.tolist()) - keep
        hard = ev["in_hardirq"].to_numpy()
        for r in sorted(extra):
            if kinds[r] == "lock_acquire":
                ctx = "hardirq" if hard[r] else "softirq"
                extra.update(_held_at(run, int(run.key[r]), int(ts[r]), ctx))
        keep |= extra
        _close(run, keep)
    keep |= _wait_rows(ev, keep)
    keep |= _alloc_rows(run, keep)
    keep |= _init_rows(ev, keep)
    mods = np.nonzero(np.isin(ev["event"].to_numpy(),
                              ["module/module_load", "module/module_free"]))[0]
    keep.update(mods.tolist())
    return run.trace, np.array(sorted(keep), dtype=np.int64)


def _wait_rows(ev: pd.DataFrame, keep: set[int]) -> set[int]:
    """The other ends of the kept waits (analysis.waits) that carry no module address:
    the end of each kept callback (a timer's exit names only the timer), and the
    ``sched_kthread_stop`` of each kept kthread that looked for its stop."""
    kinds = ev["kind"].to_numpy()
    addr = ev["lock_addr"].to_numpy()
    cpu = ev["cpu"].to_numpy()
    ltype = ev["lock_type"].astype(str).to_numpy()
    kept = np.array(sorted(keep), dtype=np.int64)
    out: set[int] = set()
    exits = np.nonzero(kinds == "callback_exit")[0]
    for r in kept[kinds[kept] == "callback_entry"].tolist():
        after = exits[(exits > r) & (addr[exits] == addr[r]) & (cpu[exits] == cpu[r])]
        if len(after):
            out.add(int(after[0]))
    threads = kept[(kinds[kept] == "signal") & (ltype[kept] == "kthread")]
    pids = set(ev["pid"].to_numpy()[threads].tolist())
    stops = np.nonzero((kinds == "wait") & (ltype == "kthread") & (addr == 0))[0]
    out.update(int(r) for r in stops.tolist() if int(ev["value"].iat[r]) in pids)
    return out


def _init_rows(ev: pd.DataFrame, keep: set[int]) -> set[int]:
    """The lock_init rows (tracer.lock_init) of the kept locks, up to their last kept event:
    they give those locks lockdep's classes."""
    kinds = ev["kind"].to_numpy()
    init = np.nonzero(kinds == "lock_init")[0]
    if not len(init) or not keep:
        return set()
    kept = np.array(sorted(keep), dtype=np.int64)
    kept = kept[np.isin(kinds[kept], LOCK_KINDS)]
    addr = ev["lock_addr"].to_numpy()
    ts = ev["ts_ns"].to_numpy()
    last: dict[int, int] = {}
    for a, t in zip(addr[kept].tolist(), ts[kept].tolist(), strict=True):
        last[a] = max(last.get(a, t), t)
    return {int(r) for r, a, t in zip(init.tolist(), addr[init].tolist(), ts[init].tolist(),
                                      strict=True) if a in last and t <= last[a]}


def save_fixture(run_dir: Path, module_names: list[str], out_dir: Path,
                 gap_ns: int = DEFAULT_GAP_NS, vmlinux: Path | None = None) -> dict[str, int]:
    """Write the fixture of ``module_names`` from ``run_dir`` into ``out_dir``; return sizes.
    ``vmlinux``: the kernel's DWARF, for the lock types of the core kernel's call sites."""
    trace, rows = select_rows(run_dir, module_names, gap_ns)
    return save_rows(trace, rows, module_names, out_dir, vmlinux)


def save_rows(trace: Trace, rows: np.ndarray, module_names: list[str], out_dir: Path,
              vmlinux: Path | None = None) -> dict[str, int]:
    """Write the events ``rows`` of ``trace`` as a fixture (the format of
    :func:`save_fixture`) into ``out_dir``; return sizes."""
    ev = trace.events.iloc[rows].reset_index(drop=True)
    # renumber the stacks the slice refers to
    sid = ev["stack_id"].to_numpy()
    used = sorted({int(s) for s in sid.tolist() if s >= 0})
    remap = {s: i for i, s in enumerate(used)}
    ev["stack_id"] = np.array([remap.get(int(s), -1) for s in sid.tolist()], dtype=np.int32)
    stacks = [list(trace.stacks[s]) for s in used]
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_events(ev, out_dir / "events.csv.gz")
    (out_dir / "stacks.json").write_text(json.dumps(stacks, separators=(",", ":")) + "\n")
    referenced = _referenced(ev, stacks, trace.call_insn_size)
    mods_used = _write_symbols(trace.symbols, referenced, set(module_names),
                               out_dir / "kallsyms")
    info = _trim_manifest(trace, set(module_names) | mods_used, module_names, len(trace.events))
    info["fixture"]["source"] = _source_answers(trace, referenced)
    info["fixture"]["lock_ctypes"] = _ctype_answers(trace, ev, vmlinux)
    # one line: a fixture's manifest is read by tests, not people
    (out_dir / "manifest.json").write_text(
        json.dumps({"manifest_version": manifest.MANIFEST_VERSION, **info}, sort_keys=True,
                   separators=(",", ":")) + "\n")
    return {p.name: p.stat().st_size for p in sorted(out_dir.iterdir()) if p.is_file()}


def _write_events(ev: pd.DataFrame, path: Path) -> None:
    df = ev[list(schema.COLUMNS)].copy()
    for col, dtype in schema.COLUMNS.items():
        if dtype == "bool":
            df[col] = df[col].astype(np.int8)  # 0/1: smaller than True/False
    with gzip.GzipFile(path, "wb", mtime=0) as fh:  # byte-stable output
        fh.write(df.to_csv(index=False, lineterminator="\n").encode())


def _read_events(path: Path) -> pd.DataFrame:
    dtypes: dict[str, Any] = {}
    for col, dtype in schema.COLUMNS.items():
        dtypes[col] = {"category": str, "bool": np.int8}.get(dtype, dtype)
    df = pd.read_csv(path, dtype=dtypes, keep_default_na=False, na_values=[])
    for col, dtype in schema.COLUMNS.items():
        if dtype == "bool" and col in df:
            df[col] = df[col].astype(bool)
    return schema.conform(df)


def _referenced(ev: pd.DataFrame, stacks: list[list[int]], call: int) -> list[tuple[int, int]]:
    """(address, trace time) of everything the analysis will look up."""
    out: list[tuple[int, int]] = []
    ts = ev["ts_ns"].to_numpy().tolist()
    for col in ("ip", "lock_addr", "key_addr"):
        vals = ev[col].to_numpy().tolist()
        out += [(int(a), t) for a, t in zip(vals, ts, strict=True) if a]
    for s, t in zip(ev["stack_id"].to_numpy().tolist(), ts, strict=True):
        if s >= 0:
            for a in stacks[s]:
                out += [(int(a), t), (int(a) - call, t)]
    return sorted(set(out))


def _index(table: SymbolTable, addr: int) -> int | None:
    i = int(np.searchsorted(table.addrs, np.uint64(addr), side="right")) - 1
    return i if i >= 0 and table.lookup(addr) is not None else None


def _write_symbols(syms: RunSymbols, referenced: list[tuple[int, int]], names: set[str],
                   path: Path) -> set[str]:
    """The kallsyms lines naming every referenced address; return the modules involved."""
    lines: dict[tuple[int, str], str] = {}
    mods: set[str] = set()

    def add(table: SymbolTable, i: int, module: str | None) -> None:
        for j in (i, i + 1):  # the next symbol bounds this one's size
            if j >= len(table):
                continue
            a = int(table.addrs[j])
            typ = "t" if bool(table.is_exec[j]) else "d"
            suffix = f"\t[{module}]" if module else ""
            lines[(a, module or "")] = f"{a:016x} {typ} {table.names[j]}{suffix}"

    # per module load, the table of the span an address falls in
    for addr, t in referenced:
        span = syms._span(addr, t)
        if span is not None:
            mods.add(span.name)
            if span.table is not None:
                i = _index(span.table, addr)
                if i is not None:
                    add(span.table, i, span.name)
            continue
        lo, hi = syms.kernel_span
        if syms.kernel is not None and lo <= addr < hi:
            i = _index(syms.kernel, addr)
            if i is not None:
                add(syms.kernel, i, None)
    path.write_text("".join(lines[k] + "\n" for k in sorted(lines)))
    return mods


def _source_answers(trace: Trace, referenced: list[tuple[int, int]]
                    ) -> dict[str, dict[str, list[Any]]]:
    """What the modules' DWARF says at each referenced module address: the driver's own
    function, file and line (``RunSymbols.source_function``/``source_location``).  Files
    are kept relative to the module's source directory."""
    syms = trace.symbols
    build = {m.name: (m.build_dir or "", m.src_dir or "") for m in trace.info.modules}
    out: dict[str, dict[str, list[Any]]] = {}
    for addr, t in referenced:
        span = syms._span(addr, t)
        if span is None:
            continue
        fn = syms.source_function(addr, t)
        if fn is None:
            continue
        loc = syms.source_location(addr, t)
        file, line = (loc[0], loc[1]) if loc else ("", 0)
        for root in build.get(span.name, ("", "")):
            if root and file.startswith(root.rstrip("/") + "/"):
                file = "src:" + file[len(root.rstrip("/")) + 1:]
                break
        out.setdefault(span.name, {})[f"{addr:x}"] = [fn, file, line]
    return out


def _ctype_answers(trace: Trace, ev: pd.DataFrame, vmlinux: Path | None
                   ) -> dict[str, dict[str, Any]]:
    """What analysis.lock_ctypes reads from DWARF for every spinlock acquisition of the
    slice ``ev`` (the questions analysis.rt_rules asks): per module, ``site``: the call
    site's answer by address; ``object``: the lock object's answer by address and
    class key, the key the fixture's own analysis gives that class (heap classes named
    without DWARF), the answer the one a run's analysis gives (``struct type.member``
    names from DWARF).  None: DWARF does not say."""
    from tracedep.analysis.dwarf_pass import _Resolver
    from tracedep.analysis.type_names import HeapNamer

    kinds = ev["kind"].to_numpy()
    rows = np.nonzero(kinds == "lock_acquire")[0]
    plain_ids, plain = lock_classes.assign(ev, trace.symbols, rows)
    r = _Resolver(trace, vmlinux)
    named_ids, named = lock_classes.assign(ev, trace.symbols, rows, HeapNamer(r.scope))
    types = LockTypes(r.scope)
    ltype = ev["lock_type"].astype(str).to_numpy()
    ips, ts = ev["ip"].to_numpy(), ev["ts_ns"].to_numpy()
    out: dict[str, dict[str, Any]] = {}
    for i, row in enumerate(rows.tolist()):
        ip, t, cp, cn = int(ips[row]), int(ts[row]), int(plain_ids[i]), int(named_ids[i])
        if ltype[row] != "spinlock" or not ip or cp < 0 or cn < 0:
            continue
        mod = trace.symbols.module_of(ip, t)
        if mod is None or mod == "?":
            continue
        rec = out.setdefault(mod, {"site": {}, "object": {}})
        a = f"{ip:x}"
        if a not in rec["site"]:
            rec["site"][a] = types.at_site(mod, ip, t)
        objs = rec["object"].setdefault(a, {})
        key = plain[cp].key
        got = types.of_object(named[cn].key, named[cn].name, mod, ip, t)
        # one answer per key: a key the two namings split gets none
        objs[key] = got if objs.get(key, got) == got else None
    return out


def _trim_manifest(trace: Trace, modules: set[str], wanted: list[str], total: int
                   ) -> dict[str, Any]:
    info = trace.info.to_json()
    out: dict[str, Any] = {k: info[k] for k in _MANIFEST_KEYS if k in info}
    out["kernel"] = {k: v for k, v in (info.get("kernel") or {}).items()
                     if k in ("release", "abi", "package_version", "flavour")}
    lost = dict(info.get("lost") or {})
    lost.pop("per_cpu", None)
    out["lost"] = lost
    out["probes"] = {"failed": (info.get("probes") or {}).get("failed", [])}
    repo = Path(__file__).resolve().parents[1]
    recs = []
    for m in info.get("modules", []):
        if m["name"] not in modules:
            continue
        src = m.get("src_dir") or ""
        try:
            src = str(Path(src).resolve().relative_to(repo))
        except ValueError:
            pass
        recs.append({"name": m["name"], "src_dir": src, "loaded": m.get("loaded", False)})
    out["modules"] = recs
    loads: dict[str, list[dict[str, Any]]] = {}
    for s in trace.symbols.modules:
        if s.name not in modules:
            continue
        per = loads.setdefault(s.name, [])
        rec = next((r for r in per if r["t0"] == s.t0), None)
        if rec is None:
            rec = {"t0": s.t0, "t1": s.t1, "spans": []}
            per.append(rec)
        rec["spans"].append([s.lo, s.hi])
    out["fixture"] = {
        "version": FIXTURE_VERSION,
        "modules": sorted(wanted),
        "source_events": total,
        "kernel_span": list(trace.symbols.kernel_span),
        "module_loads": loads,
    }
    return out


def load_fixture(fixture_dir: Path) -> Trace:
    """A fixture written by :func:`save_fixture`, ready for ``analysis.pipeline.analyze``."""
    info = manifest.read(fixture_dir)
    fx = info.extra.get("fixture")
    if not isinstance(fx, dict) or int(fx.get("version", 0)) != FIXTURE_VERSION:
        raise InputError(f"{fixture_dir}: not a tracedep fixture (version {FIXTURE_VERSION})")
    events = _read_events(fixture_dir / "events.csv.gz")
    schema.validate(events)
    stacks = [tuple(int(a) for a in s) for s in json.loads(
        (fixture_dir / "stacks.json").read_text())]
    kernel_entries: list[tuple[int, str, str]] = []
    mod_entries: dict[str, list[tuple[int, str, bool]]] = {}
    for addr, typ, name in read_kallsyms((fixture_dir / "kallsyms").read_text()):
        sym, _, mod = name.partition("\t")
        if mod:
            mod_entries.setdefault(mod.strip("[]"), []).append((addr, sym, typ in "tT"))
        else:
            kernel_entries.append((addr, typ, sym))
    kernel = SymbolTable.from_kallsyms(kernel_entries) if kernel_entries else None
    spans: list[ModuleSpan] = []
    for name, loads in fx["module_loads"].items():
        table = _module_table(mod_entries.get(name, []),
                              [tuple(s) for ld in loads for s in ld["spans"]])
        for ld in loads:
            spans += [ModuleSpan(name, int(lo), int(hi), table, int(ld["t0"]), int(ld["t1"]))
                      for lo, hi in ld["spans"]]
    lo, hi = fx["kernel_span"]
    syms = _FixtureSymbols(kernel, (int(lo), int(hi)), spans)
    repo = Path(__file__).resolve().parents[1]
    srcs = {m.name: m.src_dir or "" for m in info.modules}
    for mod, answers in (fx.get("source") or {}).items():
        src = repo / srcs.get(mod, "")
        for a, (fn, file, line) in answers.items():
            if file.startswith("src:"):
                file = str(src / file[4:])
            syms.answers[(mod, int(a, 16))] = (fn, file, int(line))
    types = fx.get("lock_ctypes")
    return Trace(events, stacks, info, syms, fixture_dir, [],
                 lock_types=_RecordedTypes(types) if isinstance(types, dict) else None)


class _RecordedTypes(LockTypes):
    """Lock types as DWARF gave them when the fixture was recorded (``lock_ctypes``)."""

    def __init__(self, answers: dict[str, dict[str, Any]]) -> None:
        super().__init__(lambda m, ip, ts: [])
        self.answers = answers

    def at_site(self, module: str, ip: int, ts: int) -> str | None:
        got = self.answers.get(module, {}).get("site", {}).get(f"{ip:x}")
        return str(got) if got else None

    def of_object(self, class_key: str, class_name: str, module: str, ip: int,
                  ts: int) -> str | None:
        got = self.answers.get(module, {}).get("object", {}).get(f"{ip:x}", {}).get(class_key)
        return str(got) if got else None


class _FixtureSymbols(RunSymbols):
    """Run symbols whose DWARF answers (driver functions and source lines) were recorded
    with the fixture instead of read from the module's .ko."""

    def __init__(self, kernel: SymbolTable | None, kernel_span: tuple[int, int],
                 modules: list[ModuleSpan]) -> None:
        super().__init__(kernel, kernel_span, modules)
        self.answers: dict[tuple[str, int], tuple[str, str, int]] = {}

    def _answer(self, addr: int, ts: int | None) -> tuple[str, str, int] | None:
        name = self.module_of(addr, ts)
        return self.answers.get((name, addr)) if name else None

    def source_function(self, addr: int, ts: int | None = None) -> str | None:
        a = self._answer(addr, ts)
        return a[0] if a else None

    def source_location(self, addr: int, ts: int | None = None) -> tuple[str, int] | None:
        a = self._answer(addr, ts)
        return (a[1], a[2]) if a and a[1] and a[2] else None


def _module_table(entries: list[tuple[int, str, bool]], spans: list[tuple[int, int]]
                  ) -> SymbolTable | None:
    if not entries:
        return None
    entries.sort()
    addrs = np.array([a for a, _, _ in entries], dtype=np.uint64)
    ends = np.array([next((h for lo, h in spans if lo <= a < h), 0) for a, _, _ in entries],
                    dtype=np.uint64)
    return SymbolTable.from_arrays(addrs, [n for _, n, _ in entries],
                                   np.zeros(len(entries), dtype=bool),
                                   np.array([x for _, _, x in entries], dtype=bool), ends,
                                   first_alias=True)


def rules_ctx(path: Path) -> Any:
    """The rules' context (analysis.rules.Ctx) over a fixture: its classes and replay,
    as the whole frame's pipeline makes them, without the row store."""
    from tracedep.analysis.rules import Ctx

    t = load_fixture(path)
    classes, table = row_classes(t)
    rep = replay(t.events, classes, not t.info.kprobe_irqs_unknown)
    return Ctx(t.events, t.stacks, t.symbols, table, rep, t.call_insn_size)


def row_classes(t: Trace) -> tuple[np.ndarray, list[Any]]:
    """Each row's lock class (-1: not an acquisition), as the pipeline assigns them,
    and the class table."""
    ev = t.events
    rows = np.nonzero(ev["kind"].to_numpy() == "lock_acquire")[0]
    ids, table = lock_classes.assign(ev, t.symbols, rows)
    classes = np.full(len(ev), -1, dtype=np.int32)
    classes[rows] = ids
    return classes, table
