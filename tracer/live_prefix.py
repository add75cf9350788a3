"""What of a run still being written can be analysed (``tracedep analyze --live``).

While the guest runs, each ``trace/cpuN.raw`` grows by whole pages, CPU by CPU and
each at its own pace (a pump ships its CPU's ring buffer every 250 ms, or sooner
when it fills).  A prefix that is the same on every CPU is read: each file's whole
pages as they stand now, and the events up to the time the slowest CPU's last page
has reached.  Past that time another CPU's records may still be on their way, and a
task that moved there would seem to hold what it has already released there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tracedep.tracer import control
from tracedep.tracer.decode_stream import Prefix
from tracedep.tracer.ftrace_formats import parse_header_page
from tracedep.tracer.retention import raw_files
from tracedep.tracer.ring_pages import walk_buffers


def readable_prefix(run_dir: Path) -> Prefix | None:
    """The prefix of the run's trace every CPU has sent whole; None if there is none
    yet (no ring-buffer header, or no page)."""
    try:
        text = control.load(run_dir / "control.log").header_page()
    except OSError:
        return None  # the guest has not spoken yet
    if not text:
        return None
    try:
        hp = parse_header_page(text)
    except ValueError:
        return None
    limits: dict[int, int] = {}
    ends: list[int] = []
    for cpu, path in raw_files(run_dir / "trace").items():
        if not path.name.endswith(".raw"):
            continue  # compressed: not a run that is still being written
        try:
            size = path.stat().st_size
        except OSError:
            continue
        whole = size - size % hp.page_size
        if not whole:
            continue
        with path.open("rb") as f:
            f.seek(whole - hp.page_size)
            last = f.read(hp.page_size)
        if len(last) != hp.page_size:
            continue
        _, ts, _, _ = walk_buffers({0: last}, hp)[0].arrays()
        # a page with no record the walk accepts still says when it began
        end = int(np.max(ts)) if len(ts) else int.from_bytes(last[:8], "little")
        limits[cpu] = whole
        ends.append(end)
    if not ends:
        return None
    return Prefix(limits, min(ends))
