"""A trace ready for analysis: the events frame, its stack table, and what the run knew.

``load(path)`` takes a run directory (binary ring-buffer pages + manifest) or a
plain ftrace text file (``trace``/``trace_pipe`` output captured elsewhere with
tracedep's probes), and validates the events against ``tracer.schema``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from tracedep.analysis.acquisitions import text_codes
from tracedep.analysis.run_symbols import RunSymbols
from tracedep.analysis.trace_model import Trace
from tracedep.common import run_manifest as manifest
from tracedep.common.memory_budget import analysis_rows
from tracedep.common.run_manifest import Lost, RunManifest
from tracedep.errors import InputError, TraceFormatError
from tracedep.tracer import schema

if TYPE_CHECKING:
    from tracedep.tracer.ftrace_binary import Cut, Decoded

log = logging.getLogger(__name__)


def load(path: Path, kallsyms: Path | None = None) -> Trace:
    if path.is_dir():
        return load_run(path)
    if path.is_file():
        from tracedep.analysis.ftrace_text import load_text

        return load_text(path, kallsyms)
    raise InputError(f"{path}: no such run directory or trace file")


def module_load_times(events: pd.DataFrame) -> dict[str, list[tuple[int, int]]]:
    """Per module name, (loaded, freed) trace times of each load seen in the trace."""
    ev = events[events["event"].isin(["module/module_load", "module/module_free"])]
    out: dict[str, list[tuple[int, int]]] = {}
    for name, is_load, t in zip(ev["func"].astype(str), ev["event"].astype(str) ==
                                "module/module_load", ev["ts_ns"].tolist(), strict=True):
        spans = out.setdefault(name, [])
        if is_load:
            spans.append((int(t), 1 << 62))
        elif spans and spans[-1][1] == 1 << 62:
            spans[-1] = (spans[-1][0], int(t))
    return out


def load_run(run_dir: Path, decoded: Decoded | None = None) -> Trace:
    """A run directory as a Trace; ``decoded``: its trace as the run decoded it when it
    ended (``tracer.session.TraceResult``), so that a run is decoded once."""
    from tracedep.tracer.decode_stream import decode_run

    info = manifest.read(run_dir)
    check_traced(run_dir, info)
    if decoded is None:
        rows, why = analysis_rows()
        decoded = decode_run(run_dir, info, rows)
        if decoded.cut:
            decoded.cut.why = why
    schema.validate(decoded.events)
    gaps = completeness(info, decoded)
    syms = RunSymbols.for_run(run_dir, info, module_load_times(decoded.events),
                              decoded.module_loads)
    warnings = gaps + list(syms.warnings)
    warnings += place_fixed_locks(decoded.events, syms)
    return Trace(decoded.events, decoded.stacks, info, syms, run_dir, warnings)


def check_traced(run_dir: Path, info: RunManifest) -> None:
    """One clear error for a run directory with no trace to read, however it is read."""
    if info.untraced:
        raise InputError(f"{run_dir}: an untraced run (tracedep trace --untraced) has no "
                         "trace to analyze")
    if not (run_dir / "control.log").is_file():
        raise TraceFormatError(f"{run_dir}: no control.log; the guest never started tracing")


def completeness(info: RunManifest, decoded: Decoded) -> list[str]:
    """What this decode could not read of what the run itself decoded, in ``info["lost"]``
    (so every report counts it as lost) and in words; empty when nothing is missing.

    The run decoded its trace once when it ended (``lost.decoded_events``, per CPU in
    ``lost.decoded_per_cpu``); a trace damaged or cut since then decodes to fewer
    events, or to torn pages, and must not be reported as complete."""
    lost = info.lost
    out: list[str] = []
    kept = info.retention or {}
    if kept.get("mode") == "drop":
        out.append("the raw pages were dropped after the run's own analysis (--raw drop), but "
                   "for those around its findings (manifest.json retention): this analysis "
                   "reads only those, and counts the others as changed and their events as "
                   "missing")
    before = {k: int(getattr(lost, k))
              for k in ("decoder_torn_pages", "decoder_backwards_pages",
                        "decoder_rejected_records", "decoder_damaged_pages",
                        "decoder_missing_pages", "decoder_unseen_switches",
                        "unreadable_events")}
    now = {"decoder_torn_pages": int(decoded.torn_pages),
           "decoder_backwards_pages": int(decoded.backwards_pages),
           "decoder_rejected_records": int(sum(decoded.rejected.values())),
           "decoder_damaged_pages": int(decoded.damaged_pages),
           "decoder_missing_pages": int(decoded.missing_pages),
           # said once, by the health's own line for them (analysis.pipeline)
           "decoder_unseen_switches": int(decoded.unseen_switches)}
    per_cpu = decoded.rows_per_cpu()
    recorded = lost.decoded_per_cpu
    missing: dict[int, int] = {}
    if recorded:
        for c, n in recorded.items():
            if str(c).isdigit() and n > per_cpu.get(int(c), 0):
                missing[int(c)] = n - per_cpu.get(int(c), 0)
    elif lost.decoded_events is not None and lost.decoded_events > decoded.total:
        missing[-1] = int(lost.decoded_events) - int(decoded.total)
    now["unreadable_events"] = sum(missing.values())
    out += _against_guest(lost, decoded)
    if decoded.cut:
        out.append(cut_note(decoded.cut))
    for cpu, n in sorted(missing.items()):
        where = f"cpu{cpu}" if cpu >= 0 else "the trace"
        out.append(f"incomplete: {n:,} events missing or unreadable on {where} (the run "
                   f"decoded them when it ended; the trace files changed since)")
    for k, what in (("decoder_torn_pages", "torn ring-buffer page(s)"),
                    ("decoder_backwards_pages", "page(s) out of time order"),
                    ("decoder_rejected_records", "record(s) that contradict their format"),
                    ("decoder_damaged_pages", "page(s) changed since the run (their "
                                              "checksums differ)"),
                    ("decoder_missing_pages", "page(s) recorded by the run gone from its "
                                              "files")):
        if now[k] > before[k]:
            out.append(f"incomplete: {now[k]:,} {what} could not be read; their events are "
                       f"missing")
    if now["decoder_rejected_records"] > before["decoder_rejected_records"]:
        why = sorted(decoded.rejected.items(), key=lambda kv: -kv[1])[:3]
        out.append("rejected records: " + "; ".join(f"{n:,} {w}" for w, n in why))
    if now != {k: before[k] for k in now}:
        total = lost.total + sum(max(now[k] - before[k], 0) for k in now)
        for k in now:
            setattr(lost, k, max(now[k], before[k]))
        lost.total = total
    if decoded.unseen_switch_first and not lost.decoder_unseen_switch:
        lost.decoder_unseen_switch = decoded.unseen_switch_first.record()
    return out


def cut_note(cut: Cut) -> str:
    """The words every report gives a trace longer than the analysis's memory."""
    total = cut.kept + cut.dropped
    return (f"analysis cut short: the trace holds {total:,} events, more than fit in "
            f"{cut.why or 'the memory limit'} (common/memory_budget.py); the first "
            f"{cut.kept:,} were analysed, up to {cut.at_ns / 1e9:.6f} s of "
            f"{cut.end_ns / 1e9:.6f} s, and nothing after that was looked at (the "
            f"counts and losses are the whole trace's); the trace is kept whole: "
            f"`tracedep analyze` with more memory (TRACEDEP_MAX_MEMORY) reads it all")


def _against_guest(lost: Lost, decoded: Decoded) -> list[str]:
    """The records in the trace files against what the guest's ring buffer says it
    handed out (``read events`` of per_cpu/cpuN/stats, sent after tracing stopped):
    equal on a whole run, stacks included.  Fewer: pages lost in transport or cut from
    the files since; more: the files hold data the guest never read (appended, or
    another run's).  Either makes the run incomplete (``lost.undelivered_events``,
    ``lost.foreign_events``)."""
    per_cpu = lost.per_cpu
    if not per_cpu:
        return []
    out: list[str] = []
    short = extra = 0
    for key, st in sorted(per_cpu.items()):
        if not (isinstance(key, str) and key.startswith("cpu") and key[3:].isdigit()
                and isinstance(st, dict)):
            continue
        read = st.get("read_events")
        if not isinstance(read, int | float) or isinstance(read, bool) or not \
                0 <= read < 1 << 63:
            continue
        got = decoded.records_per_cpu.get(int(key[3:]), 0)
        if got < read:
            short += int(read) - got
            out.append(f"incomplete: {int(read) - got:,} of the {int(read):,} events the "
                       f"guest's ring buffer handed out on {key} are not in the trace files "
                       f"(lost in transport, or cut from the files since)")
        elif got > read:
            extra += got - int(read)
            out.append(f"incomplete: the trace files hold {got - int(read):,} more events on "
                       f"{key} than the guest read ({int(read):,}): they were added since, "
                       f"or come from elsewhere")
    if short or extra:
        lost.undelivered_events = short
        lost.foreign_events = extra
        lost.total = max(lost.total, short + extra)
    return out


def place_fixed_locks(events: pd.DataFrame, syms: RunSymbols) -> list[str]:
    """Lock events of functions that take one known lock (``cpus_read_lock()``:
    ``cpu_hotplug_lock``; tracer.probes.FIXED_LOCKS) get its runtime address."""
    from tracedep.tracer.probes import FIXED_LOCKS, GROUP

    if events.empty:
        return []
    # codes of the categorical, not a string per row: tens of millions of rows
    names, codes = text_codes(events["event"])
    la = None
    missing: set[str] = set()
    for func, sym in FIXED_LOCKS.items():
        wanted = {f"{GROUP}/{role}_{func}" for role in ("lk", "ul", "lr")}
        hit = [i for i, n in enumerate(names.tolist()) if n in wanted]
        rows = np.nonzero(np.isin(codes, hit))[0] if hit else np.zeros(0, np.int64)
        if not len(rows):
            continue
        addrs = syms.kernel.addresses_of(sym) if syms.kernel is not None else []
        if len(addrs) != 1:
            missing.add(sym)
            continue
        if la is None:
            la = events["lock_addr"].to_numpy().copy()
        la[rows] = np.uint64(addrs[0])
    if la is not None:
        events["lock_addr"] = la
    return [f"{s}: not (or not once) in kallsyms; its lock events are unplaced"
            for s in sorted(missing)]
