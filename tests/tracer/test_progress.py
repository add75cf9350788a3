"""The progress line counts what the decoder decodes, while the trace grows.

The run is the recorded real trace of tests/data/traces/tiny/; its pages are
appended to a copy's trace/cpu0.raw a few at a time (half a page at the end, as
a live stream leaves it), and the meter must count every record of the pages
complete so far, exactly as the decoder's page walker does.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tracedep.tracer import control, progress
from tracedep.tracer.ftrace_formats import parse_header_page
from tracedep.tracer.progress import ProgressMeter
from tracedep.tracer.ring_pages import walk_buffers

TINY = Path(__file__).parents[1] / "data" / "traces" / "tiny"
LINE = re.compile(r"^tracedep: progress uptime_s=(\d+\.\d) records=(\d+) records_per_s=(\d+) "
                  r"trace_mb=(\d+\.\d) lost=(\d+) findings=(\d+|-) "
                  r"findings_uptime_s=(\d+\.\d|-)$")


@pytest.mark.parametrize("read_pages", [4096, 3, 1])
def test_progress_counts_the_complete_pages(tmp_path: Path, read_pages: int,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the pieces the meter reads the new pages in (a busy guest appends a
    gigabyte a minute, read 4096 pages at a time), the counts are one walk's."""
    monkeypatch.setattr(progress, "READ_PAGES", read_pages)
    run = tmp_path / "run"
    (run / "trace").mkdir(parents=True)
    meter = ProgressMeter(run)
    assert meter.sample() is None  # no ring-buffer header yet
    shutil.copy(TINY / "control.log", run / "control.log")
    hp = parse_header_page(control.load(TINY / "control.log").header_page() or "")
    data = (TINY / "trace" / "cpu0.raw").read_bytes()
    pages = len(data) // hp.page_size
    assert pages >= 4
    out = run / "trace" / "cpu0.raw"
    lines = []
    for upto in (pages // 3, pages // 3, 2 * pages // 3, pages):
        cut = upto * hp.page_size + (hp.page_size // 2 if upto < pages else 0)
        out.write_bytes(data[:cut])
        p = meter.sample()
        assert p is not None
        recs, _, _, _ = walk_buffers({0: data[:upto * hp.page_size]}, hp)
        _, ts, _, _ = recs.arrays()
        assert p.records == len(ts)
        assert p.uptime_s == round(int(ts.max()) / 1e9, 1)
        assert p.lost == recs.missed_events
        lines.append(p.line())
    for line in lines:
        assert LINE.match(line), line
        assert line.endswith(" findings=- findings_uptime_s=-")  # no live analysis here
    assert int(LINE.match(lines[-1]).group(3)) > 0  # type: ignore[union-attr]


def test_the_line_carries_the_latest_live_analysis() -> None:
    p = progress.Progress(412.7, 51230456, 124500, 1834.2, 0, 3, 205.1)
    m = LINE.match(p.line())
    assert m is not None and m.group(6, 7) == ("3", "205.1"), p.line()
