"""The progress line of a run: what the trace says while the guest runs.

Every ``interval`` seconds the run prints, on stderr, one line such as::

    tracedep: progress uptime_s=412.7 records=51230456 records_per_s=124500 \
      trace_mb=1834.2 lost=0 findings=3 findings_uptime_s=205.1

(one line: cut in two here)

``key=value`` fields, always in this order, so a terminal user reads it and a log
reader splits it:

* ``uptime_s``: the guest's trace clock (``global``: seconds since its boot) at
  the newest record received;
* ``records``: ring-buffer records received so far (events and their stacks);
* ``records_per_s``: records per second of guest time since the previous line
  (the first line: since the first record);
* ``trace_mb``: raw trace bytes received (all CPUs);
* ``lost``: events the guest's ring buffer reported overwritten or dropped in the
  pages received (the page headers' missed-events counts);
* ``findings``: the findings of the latest analysis made while the guest runs
  (tracer.live; ``-`` until the first is done), and ``findings_uptime_s``: the
  guest time its events reach (behind ``uptime_s``: it analysed the trace as it
  stood when it began, and takes its time).

The meter reads only the complete pages appended to ``trace/cpuN.raw`` since its
last look, with the same page walker as the decoder (tracer.ring_pages); the
pages came from the guest and are checked as the decoder checks them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tracedep.tracer import control
from tracedep.tracer.ftrace_formats import PageHeader, parse_header_page
from tracedep.tracer.ring_pages import walk_buffers

READ_PAGES = 4096  # pages walked at a time (16 MB of 4 kB pages)


@dataclass
class Progress:
    uptime_s: float
    records: int
    records_per_s: int
    trace_mb: float
    lost: int
    findings: int | None = None
    findings_uptime_s: float | None = None

    def line(self) -> str:
        at = "-" if self.findings_uptime_s is None else f"{self.findings_uptime_s:.1f}"
        return (f"tracedep: progress uptime_s={self.uptime_s:.1f} records={self.records} "
                f"records_per_s={self.records_per_s} trace_mb={self.trace_mb:.1f} "
                f"lost={self.lost} findings={'-' if self.findings is None else self.findings} "
                f"findings_uptime_s={at}")


class ProgressMeter:
    """Counts what ``run_dir/trace/cpu*.raw`` received since the last :meth:`sample`."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.hp: PageHeader | None = None
        self.read_to: dict[Path, int] = {}  # file -> bytes already walked (whole pages)
        self.records = 0
        self.lost = 0
        self.last_ts = 0
        self.first_ts: int | None = None
        self._prev: tuple[int, int] | None = None  # (records, ts) at the previous line

    def _header(self) -> PageHeader | None:
        if self.hp is None:
            try:
                text = control.load(self.run_dir / "control.log").header_page()
                self.hp = parse_header_page(text) if text else None
            except Exception:  # noqa: BLE001 - control.log is still being written
                return None
        return self.hp

    def _count(self, buf: bytes, hp: PageHeader) -> None:
        recs = walk_buffers({0: buf}, hp)[0]
        _, ts, _, _ = recs.arrays()
        self.records += len(ts)
        self.lost += recs.missed_events
        if len(ts):
            self.last_ts = max(self.last_ts, int(np.max(ts)))
            lo = int(np.min(ts))
            self.first_ts = lo if self.first_ts is None else min(self.first_ts, lo)

    def sample(self) -> Progress | None:
        """The progress so far; None until the guest has sent its ring-buffer header."""
        hp = self._header()
        if hp is None:
            return None
        total = 0
        for raw in sorted((self.run_dir / "trace").glob("cpu*.raw")):
            try:
                size = raw.stat().st_size
            except OSError:
                continue
            total += size
            done = self.read_to.get(raw, 0)
            whole = (size - done) // hp.page_size * hp.page_size
            if whole <= 0:
                continue
            # a piece at a time: a busy guest appends a gigabyte a minute, and its
            # records' arrays cost several times the pages (a 30-minute run's host
            # process peaked at 3.5 GB in here)
            piece = hp.page_size * READ_PAGES
            with raw.open("rb") as f:
                f.seek(done)
                while whole > 0:
                    buf = f.read(min(piece, whole))
                    n = len(buf) // hp.page_size * hp.page_size
                    if n:
                        self._count(buf[:n] if n < len(buf) else buf, hp)
                    done += n
                    whole -= n
                    if not n or n < len(buf):
                        break  # a short read: the next look starts at the page it ended in
            self.read_to[raw] = done
        if self._prev is None and self.first_ts is not None:
            self._prev = (0, self.first_ts)  # the first line: since the first record
        rate = 0
        if self._prev is not None and self.last_ts > self._prev[1]:
            rate = int((self.records - self._prev[0]) * 1e9 / (self.last_ts - self._prev[1]))
        self._prev = (self.records, self.last_ts)
        return Progress(round(self.last_ts / 1e9, 1), self.records, rate,
                        round(total / 1e6, 1), self.lost)
