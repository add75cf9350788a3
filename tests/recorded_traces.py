"""The recorded real traces the analysis tests run over, and changes a real trace could have.

``FIXTURES``: slices of real runs of the bundled drivers (tests/recorded_fixture.py,
tests/data/traces/README.md says how each was made); ``RUNS``: whole recorded run
directories.  ``load_any`` reads either.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from recorded_fixture import load_fixture

from tracedep.analysis.trace import load_run
from tracedep.analysis.trace_model import Trace
from tracedep.tracer import schema
from tracedep.tracer.ftrace_binary import GAP_EVENT

DATA = Path(__file__).parent / "data" / "traces"
FIXTURES = ([DATA / "classes" / "events"]
            + sorted(p.parent for p in DATA.glob("rules/*/manifest.json"))
            + sorted(p.parent for p in DATA.glob("lockdep/rules/*/manifest.json")))
RUNS = [DATA / "tiny", DATA / "classes" / "raw", DATA / "lockdep" / "raw"]


def load_any(path: Path) -> Trace:
    return load_run(path) if path in RUNS else load_fixture(path)


def rows_of(t: Trace, **eq: object) -> pd.DataFrame:
    ev = t.events
    m = pd.Series(True, index=ev.index)
    for col, v in eq.items():
        m &= ev[col].astype(str) == str(v)
    return ev[m]


def with_gap_inside(t: Trace, lock_type: str) -> Trace:
    """A gap row inside every callback span of ``lock_type`` objects."""
    ev = t.events
    entries = rows_of(t, kind="callback_entry", lock_type=lock_type)
    assert len(entries), lock_type
    gaps = schema.conform(pd.DataFrame({
        "ts_ns": entries["ts_ns"].to_numpy() + 1, "cpu": entries["cpu"].to_numpy(),
        "kind": "gap", "event": GAP_EVENT}))
    t.events = schema.conform(pd.concat([ev, gaps], ignore_index=True)
                              .sort_values(["ts_ns", "cpu"], kind="stable"))
    return t
