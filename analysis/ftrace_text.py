"""Parse ftrace *text* (what ``trace`` and ``trace_pipe`` print) into the events frame.

A trace captured on a real machine with tracedep's probes (``tracedep probes``)
is read into exactly the frame :mod:`tracedep.tracer.ftrace_binary` decodes
from ring-buffer pages, validated against :mod:`tracedep.tracer.schema`.

The text format (``kernel/trace/trace_output.c``), one event per line::

    # tracer: nop
    # entries-in-buffer/entries-written: 896/896   #P:2
    #           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION
     kworker/0:1-17  [000] ...1.  91.263361: kmalloc: call_site=td_x+0x73/0x10f [td_mod] ...
     kworker/0:1-17  [000] ...1.  91.263373: <stack trace>
     => trace_event_raw_event_kmalloc
     => kmalloc_trace
    CPU:1 [LOST 1414 EVENTS]

* the flags column is irqs-off/BH-off, need-resched, hardirq/softirq, preempt
  depth and (5.13+, 5 characters) migrate-disable; older kernels print 4;
* ``options/sym-offset`` adds ``+0x73/0x10f [module]`` to printed symbols,
  ``options/sym-addr`` adds `` <ffffffffc052f173>``; without sym-offset stack
  frames are bare function names;
* an address the kernel can no longer name (a module unloaded before the trace
  was read) prints raw, ``0xffffffffc052f173``.

Addresses come from the text where it has them (kprobe ``ret=``, ``<addr>``,
raw call sites); a symbolized call site (``call_site=%pS``) is turned back into
an address through the machine's kallsyms when one is given, or through the
symbols the text itself placed (every ``name+off/size <addr>`` it printed).
Call sites that stay unresolved keep ``ip`` 0 and are listed by event row in
:attr:`Trace.text_sites`; kernel stacks whose frames are not all exact
addresses keep an empty entry in :attr:`Trace.stacks` and their frames, as
names, in :attr:`Trace.text_stacks` (see ``analysis.witness.clean_text_stack``).

Lost events are never silent: ``CPU:n [LOST m EVENTS]`` lines, the events a
``trace`` header says were overwritten, and a truncated last line are counted
into ``info["lost"]`` (the run's health).  A ``[LOST]`` line, and a change of a
CPU's task that no ``sched_switch`` explains (tracer.unseen_switches), also leave a
``gap`` row before the CPU's next row, as the binary decoder does, so the analysis
forgets what was held there.  Anything else that is not ftrace
text raises :class:`~tracedep.errors.TraceFormatError` naming file and line.

The lines are read by :mod:`.text_parser`, printed symbols and kallsyms handled by
:mod:`.text_symbols`, printed numbers and flags by :mod:`.text_values`; this module
turns the parsed rows into a :class:`Trace`.
"""


from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tracedep.analysis.findings import Frame
from tracedep.analysis.run_symbols import RunSymbols
from tracedep.analysis.text_parser import TextParser
from tracedep.analysis.text_symbols import (
    build_symbols,
    guess_arch,
    read_kallsyms,
    resolve_sym,
    site_frame,
    stack_frame,
)
from tracedep.analysis.text_values import MASK64
from tracedep.analysis.trace_model import Trace
from tracedep.common.machines import MACHINES, Machine
from tracedep.common.run_manifest import Kaslr, Lost, RunManifest
from tracedep.errors import TraceFormatError
from tracedep.kimage.elf_symbols import SymbolTable
from tracedep.tracer import schema, unseen_switches
from tracedep.tracer.ftrace_binary import GAP_EVENT
from tracedep.tracer.probes import parse_event_name
from tracedep.tracer.unseen_switches import UnseenSwitch


def load_text(path: Path, kallsyms: Path | None = None) -> Trace:
    """Read an ftrace text trace (``trace`` or ``trace_pipe`` output; gzip is fine).

    ``kallsyms``: a copy of the traced machine's ``/proc/kallsyms`` (module lines
    included), to turn symbolized call sites back into addresses and to name the
    kernel's and modules' addresses.
    """
    try:
        data = path.read_bytes()
    except OSError as e:
        raise TraceFormatError(f"{path}: {e.strerror or e}") from None
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise TraceFormatError(f"{path}: broken gzip data: {e}") from None
    p = TextParser(path)
    p.parse(data)
    ksyms = read_kallsyms(kallsyms) if kallsyms is not None else []
    try:
        return _finish(p, ksyms, kallsyms)
    except OverflowError as e:  # a number no kernel prints into a column of its width
        raise TraceFormatError(f"{path}: a value out of range for its field ({e})") from None


def _finish(p: TextParser, ksyms: list[tuple[int, str, str]], kallsyms: Path | None
            ) -> Trace:
    warnings: list[str] = []
    arch, guessed = guess_arch(ksyms, p.code_addrs)
    machine = MACHINES[arch]
    symbols, tables = build_symbols(ksyms, p.printed)
    ip, ours, site_of_row, unresolved = _ips(p, tables, machine.call_insn_size)
    if unresolved:
        why = "not in the kallsyms given" if ksyms else "no --kallsyms given"
        warnings.append(f"{unresolved} call sites are known only by name ({why}): their "
                        "events have ip 0 and heap lock classes may be missing")
    warnings += _parse_warnings(p, guessed)
    events, new_row, unseen = _events(p, ip, ours, machine.kprobe_reports_irqs_off)
    text_sites = {int(new_row[row]): f for row, f in site_of_row.items()}
    stacks, text_stacks, names_only = _stacks(p, tables, symbols)
    if names_only:
        warnings.append(
            f"{names_only} kernel stacks are known by name, not by address (capture with "
            "options/sym-addr, or with options/sym-offset and pass --kallsyms, for exact "
            "frames)")
    lost = _lost(p, warnings, unseen)
    info = _info(p, ksyms, kallsyms, machine, arch, lost)
    return Trace(events, stacks, info, symbols, p.path, warnings, text_stacks=text_stacks,
                 text_sites=text_sites)


def _ips(p: TextParser, tables: dict[str, SymbolTable], cs: int
         ) -> tuple[np.ndarray, np.ndarray, dict[int, Frame], int]:
    """(every row's ``ip``, which rows are our probes', the witness frame of each call
    site known only by name, by row, how many such sites).  ``cs``: the call
    instruction's size."""
    r = p.rows
    ip = np.array(r.ip, dtype=np.uint64)
    ours = np.array([parse_event_name(e) is not None for e in r.event], dtype=bool)
    # kprobe rows hold their raw return address: now the call size is known
    lk_sl = ours & np.isin(np.array(r.kind, dtype=object), ["lock_acquire", "lock_release",
                                                             "sleep_call", "lock_init",
                                                             "wait", "signal", "work_queued"])
    ip[lk_sl] = ip[lk_sl] - np.uint64(cs)
    site_of_row: dict[int, Frame] = {}
    unresolved = 0
    for st in p.sites:
        adj = -cs if st.return_address else 0
        a = resolve_sym(st.sym, tables)
        if a is not None:
            ip[st.row] = np.uint64((a + adj) & MASK64)
        else:
            ip[st.row] = 0
            if st.sym.name is not None:
                unresolved += 1
                site_of_row[st.row] = site_frame(st.sym, adj, p.name_module)
    return ip, ours, site_of_row, unresolved


def _parse_warnings(p: TextParser, guessed_arch: bool) -> list[str]:
    """What the text could not say, as the parser found it."""
    warnings = []
    if p.unknown_gfp:
        warnings.append("unknown GFP flag names (another kernel version?): "
                        + ", ".join(sorted(p.unknown_gfp)))
    if p.ptrs_seen and p.ptrs_small == p.ptrs_seen:
        warnings.append("allocation pointers look hashed (the machine booted without "
                        "no_hash_pointers): heap lock classes cannot be found")
    if p.no_flags:
        warnings.append("the trace has no flags column (options/irq-info off): IRQ, "
                        "softirq and preemption state are unknown")
    if guessed_arch:
        warnings.append("architecture not recognisable from the trace; assumed x86_64")
    return warnings


def _events(p: TextParser, ip: np.ndarray, ours: np.ndarray, kprobe_reports_irqs_off: bool
            ) -> tuple[pd.DataFrame, np.ndarray, list[UnseenSwitch]]:
    """The events frame, in time order, each parsed row's index in it, and the changes of
    task no context switch explains.  Where events are missing (a ``[LOST]`` line, such
    a change) a ``gap`` row goes before the CPU's next row, as the binary decoder places
    them: the analysis forgets what was held there."""
    r = p.rows
    n = len(r)
    ctx = np.array(r.ctx, dtype=np.int64).reshape(n, 6) if n else np.zeros((0, 6), np.int64)
    irqs_off = ctx[:, 0].astype(bool)
    if kprobe_reports_irqs_off:
        irqs_off[ours] = False
    comms = dict(p.comms)
    comms[0] = "<idle>"
    comm = [c if c != "<...>" else comms.get(pid, c) for c, pid in zip(r.comm, r.pid,
                                                                      strict=True)]
    stack_id = np.array(r.stack_id, dtype=np.int32)
    ts = np.array(r.ts, dtype=np.int64)
    cpu = np.array(r.cpu, dtype=np.int16)
    pid = np.array(r.pid, dtype=np.int32)
    kind = pd.Categorical(r.kind)
    target = np.array(r.target_pid, dtype=np.int32)
    lost_at = _lost_rows(p, cpu)
    unseen = unseen_switches.find(cpu, pid, ts, np.asarray(kind == "sched_switch"), target,
                                  cpu[lost_at], ts[lost_at])
    gap_at = np.unique(np.concatenate([lost_at, [u.index for u in unseen]])).astype(np.int64)
    df = pd.DataFrame({
        "ts_ns": ts,
        "cpu": cpu,
        "pid": pid,
        "comm": pd.Categorical(comm),
        "irqs_off": irqs_off,
        "preempt_depth": ctx[:, 5].astype(np.int8),
        "bh_off": ctx[:, 1].astype(bool),
        "in_hardirq": ctx[:, 2].astype(bool),
        "in_softirq": ctx[:, 3].astype(bool),
        "in_nmi": ctx[:, 4].astype(bool),
        "kind": kind,
        "event": pd.Categorical(r.event),
        "lock_addr": np.array(r.lock_addr, dtype=np.uint64),
        "lock_type": pd.Categorical(r.lock_type),
        "lock_flags": pd.Categorical(r.lock_flags),
        "ip": ip,
        "gfp": np.array(r.gfp, dtype=np.uint64).astype(np.uint32),
        "ptr": np.array(r.ptr, dtype=np.uint64),
        "bytes": np.array(r.nbytes, dtype=np.int64),
        "func": pd.Categorical(r.func),
        "value": np.array(r.value, dtype=np.int64),
        "stack_id": stack_id,
        "target_pid": target,
        "lock_name": pd.Categorical(_sparse(r.lock_name, n, "")),
        "key_addr": np.array(_sparse(r.key_addr, n, 0), dtype=np.uint64),
        "_row": np.arange(n, dtype=np.int64),
        "_seq": 2 * np.arange(n, dtype=np.int64) + 1,
    })
    if len(gap_at):
        df = _with_gaps(df, gap_at)
    df = df.sort_values(["ts_ns", "_seq"], kind="stable")
    new_row = np.empty(n, dtype=np.int64)
    rows = df["_row"].to_numpy()
    new_row[rows[rows >= 0]] = np.nonzero(rows >= 0)[0]
    df = df.drop(columns=["_row", "_seq"]).reset_index(drop=True)
    events = schema.conform(df)
    schema.validate(events)
    return events, new_row, unseen


def _with_gaps(df: pd.DataFrame, gap_at: np.ndarray) -> pd.DataFrame:
    """``df`` and a gap row at the time of each of the rows ``gap_at``, sorting just
    before it (text times are microseconds: rows before it on its CPU may share them)."""
    k = len(gap_at)
    given = {"ts_ns": df["ts_ns"].to_numpy()[gap_at], "cpu": df["cpu"].to_numpy()[gap_at],
             "kind": ["gap"] * k, "event": [GAP_EVENT] * k, "_row": np.full(k, -1),
             "_seq": 2 * gap_at}
    cats = [c for c in df.columns if isinstance(df[c].dtype, pd.CategoricalDtype)]
    gaps = pd.DataFrame({c: given[c] if c in given else [""] * k if c in cats else
                         np.full(k, -1 if c in ("stack_id", "target_pid") else 0,
                                 dtype=df[c].to_numpy().dtype) for c in df.columns})
    return pd.concat([df.astype({c: object for c in cats}), gaps], ignore_index=True)


def _lost_rows(p: TextParser, cpu: np.ndarray) -> np.ndarray:
    """The row before which each ``[LOST]`` line's events are missing: its CPU's next
    row (none after the CPU's last row: nothing is left to forget there)."""
    out = []
    for x in p.lost_lines:
        after = np.nonzero(cpu[int(x["row"]):] == int(x["cpu"]))[0]
        if len(after):
            out.append(int(x["row"]) + int(after[0]))
    return np.asarray(out, dtype=np.int64)


def _stacks(p: TextParser, tables: dict[str, SymbolTable], symbols: RunSymbols
            ) -> tuple[list[tuple[int, ...]], list[tuple[Frame, ...]], int]:
    """Each kernel stack by address (empty unless every frame's address is known), by
    frame, and how many are known only by name."""
    stacks: list[tuple[int, ...]] = []
    text_stacks: list[tuple[Frame, ...]] = []
    names_only = 0
    for frames in p.stacks:
        addrs = [resolve_sym(s, tables) if (s.addr is not None or s.off is not None) else None
                 for s in frames]
        exact = [a for a in addrs if a is not None]
        if frames and len(exact) == len(frames):
            stacks.append(tuple(a for a in exact if a))
        else:
            stacks.append(())
            names_only += 1
        text_stacks.append(tuple(stack_frame(s, a, symbols, p.name_module, tables)
                                 for s, a in zip(frames, addrs, strict=True)))
    return stacks, text_stacks, names_only


def _lost(p: TextParser, warnings: list[str], unseen: list[UnseenSwitch]) -> Lost:
    """What the text says was lost (``info["lost"]``), and what its changes of task
    with no context switch say (``unseen``); its warnings go to ``warnings``."""
    lost_reported = sum(int(x["count"]) for x in p.lost_lines if x["count"] is not None)
    unknown_markers = sum(1 for x in p.lost_lines if x["count"] is None)
    if unknown_markers:
        warnings.append(f"{unknown_markers} '[LOST EVENTS]' lines without a count: at least "
                        "one event lost at each")
    if p.truncated_lines:
        warnings.append("the last line of the trace file is cut short (capture interrupted); "
                        "it was ignored")
    total = lost_reported + p.overwritten + unknown_markers + p.truncated_lines + len(unseen)
    return Lost(
        total=total,
        decoder_unseen_switches=len(unseen),
        decoder_unseen_switch=unseen[0].record() if unseen else {},
        lost_lines=list(p.lost_lines),
        reported=lost_reported,
        unknown_count_lines=unknown_markers,
        overwritten=p.overwritten,
        truncated_lines=p.truncated_lines,
        truncated=bool(p.truncated_lines),
    )


def _info(p: TextParser, ksyms: list[tuple[int, str, str]], kallsyms: Path | None,
          machine: Machine, arch: str, lost: Lost) -> RunManifest:
    """The trace's ``info``: what a run's manifest says, as far as a text trace knows it."""
    kas: Kaslr | None = None
    if ksyms:
        runtime = next((a for a, _, nm in ksyms if nm == machine.text_symbol), None)
        if runtime is not None:
            kas = Kaslr(machine.text_symbol, runtime)
    return RunManifest(
        source={
            "format": "ftrace-text",
            "path": str(p.path),
            "kallsyms": str(kallsyms) if kallsyms is not None else None,
            "tracer": p.tracer,
            "reader": "trace" if p.header else "trace_pipe",
            "flags_width": sorted(p.flag_widths),
            "sym_addr": p.sym_addr,
            "sym_offset": p.sym_offset,
            "ncpus": p.ncpus,
            "marker_continuations": p.continuations,
        },
        arch=arch,
        call_insn_size=machine.call_insn_size,
        machine_kprobe_irqs_masked=machine.kprobe_reports_irqs_off,
        kprobe_irqs_unknown=machine.kprobe_reports_irqs_off,
        kaslr=kas,
        event_counts=dict(sorted(p.counts.items())),
        lost=lost,
    )


def _sparse(values: dict[int, Any], n: int, default: Any) -> list[Any]:
    out = [default] * n
    for row, v in values.items():
        out[row] = v
    return out
