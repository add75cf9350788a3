"""A trace ready for analysis: the events frame, its stack table, and what the run knew.

``load(path)`` takes a run directory (binary ring-buffer pages + manifest) or a
plain ftrace text file (``trace``/``trace_pipe`` output captured elsewhere with
tracedep's probes), and validates the events against ``tracer.schema``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tracedep.analysis.findings import Frame
from tracedep.analysis.symbols import RunSymbols
from tracedep.errors import InputError, TraceFormatError
from tracedep.tracer import manifest, schema

log = logging.getLogger(__name__)


@dataclass
class Trace:
    events: pd.DataFrame  # tracer.schema columns, sorted by ts_ns
    stacks: list[tuple[int, ...]]  # raw return addresses, innermost first
    info: dict[str, Any]  # the run's manifest (a minimal one for foreign text traces)
    symbols: RunSymbols
    source: Path
    warnings: list[str] = field(default_factory=list)
    # ftrace text traces only (analysis.ftrace_text): a stack whose frames the text
    # names but does not give exact addresses for has () in ``stacks`` and its frames
    # here, at the same index (return addresses, as ftrace recorded them); events
    # whose call site is known by name only (``ip`` 0) have it here, by row.
    text_stacks: list[tuple[Frame, ...]] = field(default_factory=list)
    text_sites: dict[int, Frame] = field(default_factory=dict)

    @property
    def call_insn_size(self) -> int:
        return int(self.info.get("call_insn_size", 5))


def load(path: Path, kallsyms: Path | None = None) -> Trace:
    if path.is_dir():
        return _load_run(path)
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


def _load_run(run_dir: Path) -> Trace:
    from tracedep.tracer.ftrace_binary import decode_run

    info = manifest.read(run_dir)
    if not (run_dir / "control.log").is_file():
        raise TraceFormatError(f"{run_dir}: no control.log; the guest never started tracing")
    decoded = decode_run(run_dir, info)
    schema.validate(decoded.events)
    syms = RunSymbols.for_run(run_dir, info, module_load_times(decoded.events))
    warnings = list(syms.warnings)
    warnings += place_fixed_locks(decoded.events, syms)
    return Trace(decoded.events, decoded.stacks, info, syms, run_dir, warnings)


def place_fixed_locks(events: pd.DataFrame, syms: RunSymbols) -> list[str]:
    """Lock events of functions that take one known lock (``cpus_read_lock()``:
    ``cpu_hotplug_lock``; tracer.probes.FIXED_LOCKS) get its runtime address."""
    from tracedep.tracer.probes import FIXED_LOCKS, GROUP

    if events.empty:
        return []
    names = events["event"].astype(str).to_numpy()
    la = None
    missing: set[str] = set()
    for func, sym in FIXED_LOCKS.items():
        rows = np.nonzero((names == f"{GROUP}/lk_{func}") | (names == f"{GROUP}/ul_{func}")
                          | (names == f"{GROUP}/lr_{func}"))[0]
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
