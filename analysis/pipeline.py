"""analysis: trace → lock classes → replay → rules → :class:`Analysis`."""

from __future__ import annotations

import errno
import logging
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from tracedep.analysis import classes as lock_classes
from tracedep.analysis import missing, order_rules, row_store, rt_rules, rules, sleep_rules, waits
from tracedep.analysis.class_stats import EXACT_VALUES, SUB_BUCKETS, StatsAcc
from tracedep.analysis.coverage import ModuleCoverage, coverage
from tracedep.analysis.findings import Analysis, ClassStats, Edge, Finding, WitnessKind
from tracedep.analysis.health import (
    TRUNCATED_NOTE,
    Ending,
    ForcedReleases,
    Health,
    ending_note,
    lost_note,
    stopped_note,
)
from tracedep.analysis.heldlocks import replay
from tracedep.analysis.lock_ctypes import LockTypes, Scope
from tracedep.analysis.nesting import NestingJudge
from tracedep.analysis.run_summary import RunSummary
from tracedep.analysis.trace import Trace
from tracedep.common import heap
from tracedep.common.run_manifest import RunManifest
from tracedep.tracer import unseen_switches
from tracedep.tracer.probes import parse_event_name

log = logging.getLogger(__name__)

def analyze(trace: Trace, nesting: NestingJudge | None = None,
            namer: lock_classes.ClassNamer | None = None) -> Analysis:
    """``nesting``: reads ``*_nested()`` annotations from DWARF and source (see
    analysis.nesting); without it only a ``--module-src`` driver's own lines are read.
    ``namer``: names heap lock classes by type (analysis.type_names)."""
    t0 = time.monotonic()
    ev = trace.events
    lock_rows = np.nonzero(ev["kind"].to_numpy() == "lock_acquire")[0]
    cls_ids, table = lock_classes.assign(ev, trace.symbols, lock_rows, namer)
    classes = np.full(len(ev), -1, dtype=np.int32)  # per row: an array, not a dict of rows
    classes[lock_rows] = cls_ids
    heap.give_back()  # each stage's temporaries: freed, but resident until handed back
    irqs_reliable = not trace.info.kprobe_irqs_unknown
    untraced = frozenset(trace.info.untraced_pids)
    # tracer.calibration: does preempt_count count held spinlocks on this kernel?
    spin_pc = trace.info.calibration.get("preempt_count_tracks_spinlocks")
    # releases the trace may not show, and the evidence that ends such locks
    unseen = missing.from_manifest(trace.info)
    rep = replay(ev, classes, irqs_reliable, untraced, spin_pc is not False,
                 depth_counts_spin=spin_pc is True,
                 suspect_rows=missing.suspect_rows(ev, lock_rows, unseen, trace.info,
                                                   trace.symbols),
                 holder_on_stack=missing.holder_on_stack(ev, trace.stacks, trace.symbols),
                 own_classes=frozenset(i for i, c in enumerate(table)
                                       if c.module not in ("vmlinux", "?", "")))
    heap.give_back()
    # waits on work items, timers, completions, kthreads: edges to object classes
    wg = waits.wait_graph(ev, trace.symbols, rep, len(table), namer)
    heap.give_back()
    scope = getattr(namer, "scope", None)
    cases = (rt_rules.allocation_cases(ev, rep, trace.symbols)
             if rt_rules.judged(scope, trace.lock_types) else [])
    # what reads every acquisition, before the rules' store keeps a few
    stats = StatsAcc(table)
    stats.add(rep.acquisitions)
    forced = missing.health(rep, unseen, [c.name for c in table])
    # the rules read only the rows named so far (analysis.row_store)
    gap_rows = np.nonzero((ev["kind"] == "gap").to_numpy())[0]
    store = row_store.RowStore.keep(ev, row_store.named_rows(rep, wg.edges, gap_rows, cases))
    kept = row_store.renumber(store, rep, wg.edges, cases, trace.text_sites)
    cov = coverage(ev, trace.symbols, table, module_names(trace))
    g = Gathered(table, wg, store, kept, stats.finish(rep.usage), stats.approximate(), forced,
                 rep.unmatched_releases, rep.irq_leaked, len(ev), cov)
    del rep
    return conclude(trace, g, nesting, namer, t0)


@dataclass
class Gathered:
    """What the rules and the report need of a trace, once it has been read: the whole
    frame's (:func:`analyze`) or a stream's (analysis.stream_pipeline)."""

    table: list[lock_classes.LockClass]
    waits: waits.WaitGraph
    store: row_store.RowStore
    kept: row_store.Renumbered  # the replay, wait edges and cases in the store's rows
    stats: list[ClassStats]
    approximate: int  # classes whose percentiles are from a histogram (class_stats)
    forced: ForcedReleases
    unmatched: int
    irq_leaked: int
    events: int
    coverage: dict[str, ModuleCoverage]


def conclude(trace: Trace, g: Gathered, nesting: NestingJudge | None,
             namer: lock_classes.ClassNamer | None, t0: float) -> Analysis:
    """The rules over the store, the edges, the health and the run's summary."""
    table, wg, kept = g.table, g.waits, g.kept
    cx = rules.Ctx(g.store.events, trace.stacks, trace.symbols, table + wg.classes,
                   kept.replay, trace.call_insn_size, wait_edges=kept.wait_edges,
                   wait_kinds=wg.kinds, text_stacks=trace.text_stacks,
                   text_sites=kept.text_sites, nesting=nesting, own_source_modules=frozenset(
                       m.name for m in trace.info.module_records if m.src_dir))
    findings = judge(cx, getattr(namer, "scope", None), trace.lock_types, kept.cases)
    withheld = _without_kallsyms(trace, findings, table)
    gone = {id(f) for f in withheld}
    findings = [f for f in findings if id(f) not in gone]
    edges = []
    for (u, v), accs in [*cx.replay.edges.items(), *cx.wait_edges.items()]:
        acc = accs[0]
        cu, cv = cx.cls(u), cx.cls(v)
        edges.append(Edge(
            before=cu.name, after=cv.name, count=sum(a.count for a in accs),
            drivers=sorted({cu.module, cv.module}),
            witness=cx.site(acc.row, WitnessKind.ACQUIRE, "acquire", cv.name, False),
            held_witness=cx.site(acc.held_row, WitnessKind.HELD, "held", cu.name, False),
            read_only=all(a.before_shared and a.after_recursive_read for a in accs)))
    health = _health(trace, g.unmatched, g.events)
    if withheld:
        health.warnings.append(
            f"no kallsyms in the run directory: core-kernel locks cannot be told apart "
            f"(their static locks would be classed as instances), so {len(withheld)} "
            f"finding(s) on vmlinux or through its unnamed locks are not reported; the "
            f"run's kallsyms.gz restores them")
    health.irq_locks_unreleased = g.irq_leaked
    health.forced_releases = g.forced
    forced_note = missing.warning(health.forced_releases)
    if forced_note:
        health.warnings.append(forced_note)
    if g.approximate:
        health.warnings.append(
            f"the hold and wait percentiles (p50, p99) of {g.approximate} lock class(es) with "
            f"more than {EXACT_VALUES:,} acquisitions are read from a histogram of "
            f"{SUB_BUCKETS} buckets per power of two (within ~{100 / SUB_BUCKETS:.1f} %); "
            f"counts, means and maxima are exact")
    if cx.honoured_nesting:
        health.warnings.append(
            f"{cx.honoured_nesting} same-class nesting(s) annotated with *_nested() "
            "(read from DWARF and source) were honoured")
    if cx.unjudged_nesting:
        health.warnings.append(
            f"{cx.unjudged_nesting} same-class nesting(s) in modules without source or DWARF "
            "were not judged (a *_nested() annotation there would be invisible)")
    health.analysis_s = round(time.monotonic() - t0, 3)
    return Analysis(findings=findings, classes=g.stats, edges=edges, health=health,
                    run=_run_summary(trace, table, g.coverage))


def _without_kallsyms(trace: Trace, findings: list[Finding],
                      table: list[lock_classes.LockClass]) -> list[Finding]:
    """The findings on the core kernel, or through its locks known only as instances,
    of a run directory that has lost its kallsyms: named nowhere, its static locks
    fall to instance classes, merged by call site, and cycles appear that are not
    there (Debian's drivers' real-world runs: 4 to 7, one through configfs)."""
    if trace.symbols.kernel is not None or not trace.source.is_dir():
        return []
    blind = {c.name for c in table if c.origin == "instance" and c.module == "vmlinux"}
    return [f for f in findings if f.driver == "vmlinux" or blind.intersection(f.locks)]


def judge(cx: rules.Ctx, scope: Scope | None, lock_types: LockTypes | None,
          cases: list[row_store.AllocationCase]) -> list[Finding]:
    """Every rule family over ``cx`` (a row store's or the whole frame's), in report order.
    ``scope``, ``lock_types``: see rt_rules.rt_findings; ``cases``: its allocations."""
    findings: list[Finding] = []
    findings += sleep_rules.sleep_findings(cx)
    findings += order_rules.order_findings(cx)
    findings += rules.irq_findings(cx)
    findings += rules.recursion_findings(cx)
    # PREEMPT_RT only (rt_rules): lock types from the namer's DWARF, or known already
    findings += rt_rules.rt_findings(cx, scope, lock_types, cases)
    findings.sort(key=lambda f: (f.driver == "vmlinux", f.driver, f.kind, f.first_ts_ns))
    mark_near_gaps(findings, cx.events)
    return findings


def _health(trace: Trace, unmatched: int, events: int) -> Health:
    info = trace.info
    lost = info.lost
    ending = Ending(how=info.ending.how, detail=info.ending.detail)
    warnings = list(trace.warnings)
    if lost.total:
        warnings.append(lost_note(lost.total))
    if lost.decoder_unseen_switches:
        warnings.append(unseen_switches.note(lost.decoder_unseen_switches,
                                             unseen_switches.UnseenSwitch.from_record(
                                                 lost.decoder_unseen_switch)))
    missed = lost.kprobe_missed
    if missed:
        warnings.append(f"{missed} probe hits were missed by kprobes: interrupt handlers "
                        f"that ran inside another probe's handler are invisible as a whole "
                        f"(lock state stays consistent; findings inside them may be missed)")
    if lost.truncated:
        warnings.append(TRUNCATED_NOTE)
    ended = ending_note(ending)
    if ended:
        warnings.append(ended)
    wl = info.workload
    if wl.stopped_by:
        warnings.append(stopped_note(wl.stopped_by, wl.start_uptime_s, wl.end_uptime_s))
    failed = info.probes.failed
    if failed:
        warnings.append(_probe_failures(failed, info.probes.failed_reasons,
                                        set(info.probes.notrace)))
    warnings += _silent_probe_classes(info)
    counts = [info.calibration.get(k) for k in ("regime_mismatch", "uncalibrated_rows")]
    odd = sum(int(v) for v in counts if isinstance(v, int) and not isinstance(v, bool) and v > 0)
    if odd:
        warnings.append(f"{odd} events of mid-function probes (inlined locks) came through a "
                        f"path the boot's calibration did not measure: their IRQ state is the "
                        f"fetched one and their preempt depth is taken as 0, so a finding "
                        f"there may be missed (tracer/calibration.py)")
    for a in info.failed_attempts:
        files = a.get("files")
        warnings.append(f"an earlier boot died before tracing started ({a.get('why')}); "
                        f"this is the next boot; that one's files are kept as "
                        f"{', '.join(str(f) for f in files) if isinstance(files, list) else ''}")
    for m in info.modules:
        bad = [rc for rc in m.insmod_rc if rc != 0]
        if bad:
            why = errno.errorcode.get(bad[0]) if m.loader == "tdinsmod" else None
            warnings.append(f"{m.name}: insmod failed (exit {bad[0]}"
                            f"{', ' + why if why else ''}): its init did not "
                            f"complete, so code it did not reach is untested (see console.log)")
        elif not m.insmod_rc and not m.loaded and info.state in ("complete", "incomplete"):
            warnings.append(f"{m.name}: never loaded by the workload: untested")
    return Health(events=events, lost=lost.total, kprobe_missed=missed,
                  truncated=lost.truncated, ending=ending,
                  unmatched_releases=unmatched, warnings=warnings, unseen=_unseen(info),
                  source=str(trace.source))


_ROLE_TEXT = {"lk": "lock", "ul": "unlock", "lr": "lock-return", "sl": "may-sleep",
              "li": "lock-init", "lc": "lock-class"}


def _probe_failures(failed: list[Any], reasons: dict[str, Any] | None = None,
                    notrace: set[str] | frozenset[str] = frozenset()) -> str:
    """Which probes the guest's kernel refused, by what they watch, each with the
    kernel's reason (tracefs ``error_log``) where it gave one: names, not a count.
    ``notrace``: functions without an ftrace location, which kprobe events refuse."""
    by_role: dict[str, dict[str, str]] = {}
    for d in failed:
        words = str(d).split()
        parsed = parse_event_name(words[0].split(":", 1)[-1]) if words else None
        role, func = parsed if parsed else ("other", words[0] if words else "?")
        why = (reasons or {}).get(str(d))
        if func in notrace:
            why = (f"{why}: " if why else "") + "notrace, kprobe events need an ftrace location"
        funcs = by_role.setdefault(role, {})
        if func not in funcs or why:
            funcs[func] = str(why) if why else ""
    parts = []
    for role, funcs in sorted(by_role.items()):
        shown = ", ".join(f"{f} ({w})" if w else f for f, w in sorted(funcs.items()))
        parts.append(f"{len(funcs)} {_ROLE_TEXT.get(role, role)} probe(s): {shown}")
    return ("the kernel refused " + "; ".join(parts) + "; what they watch is unseen "
            "(manifest.json probes.failed has the definitions)")


NEAR_GAP_NS = 100_000_000  # how close a gap must be to a witness to be mentioned


def mark_near_gaps(findings: list[Finding], ev: pd.DataFrame) -> None:
    """Mark the findings whose witnesses lie within NEAR_GAP_NS of a gap (events the
    trace is missing there: a page not read whole, lost events, a rejected record).
    The replay ends every hold at a gap, so a gap cannot make a finding up; but what
    the missing events did near the witnesses is unknown, and the report says so
    (``details.near_gap``)."""
    if not findings:
        return
    gap_ts = np.sort(ev.loc[ev["kind"] == "gap", "ts_ns"].to_numpy(dtype=np.int64))
    if not len(gap_ts):
        return
    for f in findings:
        times = [s.ts_ns for s in f.sites if s.ts_ns is not None] or [f.first_ts_ns]
        lo, hi = min(times) - NEAR_GAP_NS, max(times) + NEAR_GAP_NS
        i = int(np.searchsorted(gap_ts, lo, side="left"))
        if i < len(gap_ts) and gap_ts[i] <= hi:
            near = gap_ts[(gap_ts >= lo) & (gap_ts <= hi)]
            first = int(near[0])
            f.details["near_gap"] = (
                f"{len(near)} gap(s) in the trace within {NEAR_GAP_NS // 1_000_000} ms of its "
                f"witnesses (the first at {first / 1e9:.6f} s): events there are missing, "
                f"so what happened around it is not fully known")


def _unseen(info: RunManifest) -> list[str]:
    """What no probe of this run could see, by design rather than by accident (the
    refused probes are warnings): said in every report, so that silence is not read
    as a clean bill."""
    out = ["percpu-rwsem readers inlined in the core kernel (sb_start_write() and the "
           "like): an inline per-CPU increment in vmlinux has no probe"]
    if info.modules and info.inline_locks is None:
        out.append("locks inlined into the modules under test (percpu-rwsem readers; "
                   "spinlocks where the kernel inlines them): this kernel has no "
                   "calibrated mid-function probe point (tracer.calibration)")
    return out


def _silent_probe_classes(info: RunManifest) -> list[str]:
    """A whole class of probes that recorded nothing: a renamed or refused kernel API,
    not a quiet workload (every boot takes locks and allocates)."""
    counts = info.event_counts
    if not counts:
        return []
    per_role: dict[str, int] = {}
    for d in info.probes.definitions:
        ev = str(d).split(" ", 1)[0].split(":", 1)[-1]
        parsed = parse_event_name(ev)
        if parsed:
            n = counts.get(ev, 0)
            per_role[parsed[0]] = per_role.get(parsed[0], 0) + (n if isinstance(n, int) else 0)
    out = [f"no {_ROLE_TEXT[r]} probe recorded any event: that class of lock operations "
           f"is unseen on this kernel" for r in ("lk", "ul", "lr")
           if r in per_role and per_role[r] == 0]
    if per_role.get("li") == 0:
        out.append("no lock-init probe recorded any event: locks have allocation-site "
                   "classes, not lockdep's (tracer.lock_init)")
    if not any(counts.get(tp) for tp in ("kmem/kmalloc", "kmem/kmem_cache_alloc")):
        out.append("no allocation event (kmem/kmalloc, kmem/kmem_cache_alloc) was recorded: "
                   "allocations in atomic context are unseen on this kernel")
    return out


def module_names(trace: Trace) -> list[str]:
    """The modules whose coverage the run's summary shows."""
    return [m.name for m in RunSummary.from_run(trace.info).modules]


def _run_summary(trace: Trace, table: list[lock_classes.LockClass],
                 cov: dict[str, ModuleCoverage]) -> RunSummary:
    """The manifest's summary, with what each module under test exercised."""
    run = RunSummary.from_run(trace.info)
    run.modules = [replace(m, lock_classes=cov[m.name].lock_classes,
                           lock_events=cov[m.name].lock_events) for m in run.modules]
    return run
