"""How many events of a trace the analysis can hold in this machine's memory.

The whole-frame analysis holds the events frame and the replay's acquisitions at
once, so its peak grows with the trace.  Measured with ``bench/bench_analysis.py`` on
90 s of the saturating benchmark load (2026-12-07, decode and replay in C, the heap
handed back between stages): 374 MB at 1.37 M events, 1,003 MB at 5.45 M and 3,406 MB
at 21.9 M, i.e. ~152 bytes an event above the imports; ``tracedep analyze --no-dwarf``
of Debian's drivers (8.47 M events) peaked at 1,452 MB.  A run whose trace holds more
events than fit is analysed a window at a time instead (analysis.stream_pipeline, the
same findings in bounded memory).  What cannot stream keeps the first events that fit
(in time order), still reads the rest for its counts and losses, and every report says
where the analysis stopped (``analysis.trace.completeness``): a text trace, and a run
whose event count is unknown (its own decode failed).

The limit is ``TRACEDEP_MAX_MEMORY`` (bytes, or with a K/M/G suffix: ``1.5G``) when
set, else 80 % of what the machine can give: ``MemAvailable`` from
``/proc/meminfo``, or the cgroup's ``memory.max`` less its ``memory.current`` when
that is smaller (a CI container).  A run directory, which can stream, is also held to
:data:`RUN_CEILING` when no limit is given (:func:`whole_rows`): its analysis peaks
under 1.5 GiB whatever the machine, and whatever the trace's length (a kernel CI
runner sizes its jobs by that); ``TRACEDEP_MAX_MEMORY`` raises it, for the whole
frame's speed on a larger machine.  Layer 0: nothing here imports another layer.
"""

from __future__ import annotations

import os
from pathlib import Path

from tracedep.errors import InputError

BYTES_PER_EVENT = 200  # the measured ~152-160 and a margin: DWARF, reports, allocator slack
BASE_BYTES = 400 << 20  # interpreter, pandas, symbols, DWARF: 1.17 M events with DWARF took 522 MB
SHARE = 0.8  # of the available memory, when no limit is given
ENV = "TRACEDEP_MAX_MEMORY"
MIN_EVENTS = 100_000
RUN_CEILING = 3 << 29  # 1.5 GiB: a run directory's analysis, when no limit is given
_SUFFIX = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """``1.5G``, ``800M``, ``2000000000`` as bytes."""
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    mult = _SUFFIX.get(t[-1:], 1)
    num = t[:-1] if t[-1:] in _SUFFIX else t
    try:
        value = float(num)
    except ValueError:
        raise InputError(f"{ENV}={text!r}: not a size (bytes, or a number with K, M or G)"
                         ) from None
    if not value > 0 or value * mult > 1 << 50:
        raise InputError(f"{ENV}={text!r}: not a size between 1 byte and 1 PiB")
    return int(value * mult)


def _meminfo_available(meminfo: Path) -> int | None:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_room(cgroup: Path) -> int | None:
    """What this process's cgroup (v2) still allows, or None when unlimited."""
    try:
        limit = (cgroup / "memory.max").read_text().strip()
        if limit == "max":
            return None
        used = int((cgroup / "memory.current").read_text().strip())
        return max(int(limit) - used, 0)
    except (OSError, ValueError):
        return None


def available_bytes(meminfo: Path = Path("/proc/meminfo"),
                    cgroup: Path = Path("/sys/fs/cgroup")) -> int | None:
    """What the machine (or its container) can still give, or None when unknown."""
    got = [v for v in (_meminfo_available(meminfo), _cgroup_room(cgroup)) if v is not None]
    return min(got) if got else None


def limit_bytes() -> tuple[int | None, str]:
    """The memory the analysis may use, and where that figure comes from."""
    given = os.environ.get(ENV)
    if given:
        return parse_size(given), f"{ENV}={given}"
    room = available_bytes()
    if room is None:
        return None, "no memory figure (no /proc/meminfo)"
    return int(room * SHARE), f"{int(SHARE * 100)} % of the {room / 2**30:.1f} GiB available"


def max_events(limit: int | None, floor: int = 1) -> int | None:
    """How many events fit in ``limit`` bytes (at least ``floor``); None: no limit."""
    if limit is None:
        return None
    return max((limit - BASE_BYTES) // BYTES_PER_EVENT, floor)


def analysis_rows() -> tuple[int | None, str]:
    """How many events the analysis may hold here, and the limit in words: a limit
    given is obeyed; one measured keeps at least :data:`MIN_EVENTS` (a machine that
    short of memory is short of it for a moment, not for good)."""
    limit, where = limit_bytes()
    if limit is None:
        return None, where
    floor = 1 if os.environ.get(ENV) else MIN_EVENTS
    return max_events(limit, floor), f"{limit / 2**30:.2f} GiB ({where})"


def whole_rows() -> tuple[int | None, str]:
    """:func:`analysis_rows` for a run directory, whose trace can stream when it does
    not fit: no more than :data:`RUN_CEILING` holds when no limit is given."""
    rows, why = analysis_rows()
    if os.environ.get(ENV):
        return rows, why
    ceiling = max_events(RUN_CEILING, MIN_EVENTS)
    if rows is None or (ceiling is not None and ceiling < rows):
        return ceiling, (f"{RUN_CEILING / 2**30:.1f} GiB (a run's analysis when no "
                         f"{ENV} is given)")
    return rows, why
