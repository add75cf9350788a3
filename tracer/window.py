"""A window of a trace's events frame: what a stream hands on (tracer.decode_stream makes
them, tracer.window_cuts re-cuts them, tracer.window_spill keeps them on disk)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd


@dataclass
class Window:
    """Rows ``row0`` … ``row0 + len(events) - 1`` of the trace's events frame."""

    events: pd.DataFrame
    row0: int
