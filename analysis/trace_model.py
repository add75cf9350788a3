"""``Trace``: one decoded run (or foreign text trace), as every analysis stage receives it.

Its own module so that both loaders (``analysis.trace`` for run directories,
``analysis.ftrace_text`` for text) can build one without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from tracedep.analysis.findings import Frame
from tracedep.analysis.lock_ctypes import LockTypes
from tracedep.analysis.run_symbols import RunSymbols
from tracedep.common.run_manifest import RunManifest


@dataclass
class Trace:
    events: pd.DataFrame  # tracer.schema columns, sorted by ts_ns
    stacks: list[tuple[int, ...]]  # raw return addresses, innermost first
    info: RunManifest  # the run's manifest (a minimal one for foreign text traces)
    symbols: RunSymbols
    source: Path
    warnings: list[str] = field(default_factory=list)
    # ftrace text traces only (analysis.ftrace_text): a stack whose frames the text
    # names but does not give exact addresses for has () in ``stacks`` and its frames
    # here, at the same index (return addresses, as ftrace recorded them); events
    # whose call site is known by name only (``ip`` 0) have it here, by row.
    text_stacks: list[tuple[Frame, ...]] = field(default_factory=list)
    text_sites: dict[int, Frame] = field(default_factory=dict)
    # the C types of spinning locks, known without DWARF (the recorded fixtures of the
    # tests carry DWARF's answers); a run's are read from DWARF by the DWARF pass
    lock_types: LockTypes | None = None

    @property
    def call_insn_size(self) -> int:
        return self.info.call_insn_size
